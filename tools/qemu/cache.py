"""Where the QEMU tier keeps what it builds: outside the repository, keyed by the recipe.

Images and chroots are hundreds of megabytes and take minutes to make, so
they are built once per recipe and kept in MESHLET_IMAGE_CACHE (default
/var/tmp/meshlet-images, never inside the checkout). The key of a build is
a hash of everything that decides its content (the script, the files it
uploads into the tree, the package list, the arch and suite): edit any of
them and the next run builds a fresh entry next to the old one instead of
trusting a stale tree. `.deb` downloads are shared between entries of one
arch and suite, so a rebuild after a recipe change does not download again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_CACHE = "/var/tmp/meshlet-images"
ENV = "MESHLET_IMAGE_CACHE"
HERE = Path(__file__).resolve().parent


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: `override`, else $MESHLET_IMAGE_CACHE, else /var/tmp/meshlet-images (created)."""
    path = Path(override or os.environ.get(ENV) or DEFAULT_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    return path


def recipe_key(files: list[Path], *parts: str) -> str:
    """16 hex digits over the files' names and bytes and the extra `parts` (package lists, arch, ...)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for p in parts:
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:16]


def debs_dir(cache: Path, arch: str, suite: str) -> Path:
    """The shared .deb download cache of one arch and suite."""
    return cache / ("debs-%s-%s" % (arch, suite))
