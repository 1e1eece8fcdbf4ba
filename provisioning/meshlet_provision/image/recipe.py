"""The from-scratch recipe's identity: a hash of everything that decides the base image's bytes.

The base image is slow to build (mmdebstrap under qemu-user), so it is cached; the cache key
must change whenever the recipe does, and only then.  The key covers the recipe directory
(script, package list, guest files), the architecture, the suite and ASSEMBLY_VERSION (bump it
when the Python that turns the tree into a disk image changes the result).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent / "recipes" / "debian"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
ASSEMBLY_VERSION = "1"


def recipe_hash(arch: str, suite: str = SUITE, recipe_dir: Path = RECIPE_DIR) -> str:
    """Hex digest (16 chars) over the recipe files' names, exec bits and contents, plus arch and suite."""
    h = hashlib.sha256()
    h.update(("meshlet-base\0%s\0%s\0%s\0" % (arch, suite, ASSEMBLY_VERSION)).encode())
    for path in sorted(p for p in recipe_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(recipe_dir).as_posix()
        if "__pycache__" in rel:
            continue
        executable = os.access(path, os.X_OK)
        h.update(("%s\0%d\0" % (rel, executable)).encode())
        data = path.read_bytes()
        h.update(b"%d\0" % len(data))
        h.update(data)
    return h.hexdigest()[:16]


def base_dir(cache_dir: Path, arch: str, suite: str = SUITE) -> Path:
    """Where one recipe's base image lives: CACHE/base-<arch>-<suite>-<hash>/."""
    return cache_dir / ("base-%s-%s-%s" % (arch, suite, recipe_hash(arch, suite)))
