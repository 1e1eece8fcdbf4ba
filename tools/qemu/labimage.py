"""The plain lab guest: Debian with meshlet's Python dependencies, no meshlet, no enrollment.

The QEMU tier's fallback and its reference point: what the runner boots
when a test wants "a stock arm64 box" rather than a provisioned image
(the runner's own tests, the qemu-user-less smoke boot), built with
build-lab-image.sh (mmdebstrap, a 6 MB initrd, 3-4 min cold per arch,
shared/lab/QEMU.md §1) into the cache keyed by its recipe. Root's
password is "root" and dropbear accepts the cache's SSH key: test images
only, never flashed anywhere.

    img = lab_image("arm64")      # LabImage: .path .boot_files .root_partition .seconds .cache_hit
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable

from cache import HERE, cache_dir, debs_dir, recipe_key

EXTRA_PACKAGES = (
    "python3-cryptography", "python3-h2", "python3-h11", "python3-zstandard",
    "python3-dnslib", "python3-segno", "python3-serial",
)  # fmt: skip
BUILD_TIMEOUT_S = 1800


class LabImageError(RuntimeError):
    """The lab image could not be built; the message points at the build log."""


class BootFiles:
    def __init__(self, kernel: Path, initrd: Path, dtb: Path | None = None) -> None:
        self.kernel = kernel
        self.initrd = initrd
        self.dtb = dtb


class LabImage:
    """Shaped like meshlet_provision.image.ImageResult, as far as the runner cares."""

    def __init__(self, out: Path, seconds: float, cache_hit: bool) -> None:
        self.dir = out
        self.path = out / "rootfs.ext4"
        self.boot_files = BootFiles(out / "vmlinuz", out / "initrd.img")
        self.root_partition = "LABEL=meshlet-root"
        self.seconds = seconds
        self.cache_hit = cache_hit
        self.ssh_key = out.parent / "id_ed25519"

    def build_info(self) -> dict[str, object]:
        info: dict[str, object] = json.loads((self.dir / "build.json").read_text())
        return info


def ssh_key(cache: Path) -> Path:
    """The cache's SSH key (made once); its .pub goes into every lab image as root's authorized key."""
    key = cache / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def lab_image(
    arch: str = "arm64", suite: str = "bookworm", cache: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> LabImage:  # fmt: skip
    """The lab image for `arch`, from the cache or built now."""
    root = cache_dir(cache)
    script = HERE / "build-lab-image.sh"
    files = [script, *sorted((HERE / "guest").iterdir())]
    key = recipe_key(files, arch, suite, ",".join(EXTRA_PACKAGES))
    out = root / ("lab-%s-%s-%s" % (arch, suite, key))
    if (out / "build.json").exists():
        return LabImage(out, 0.0, True)
    key_path = ssh_key(root)
    if progress:
        progress("building the %s lab image in %s (3-4 min)" % (arch, out))
    t0 = time.monotonic()
    log = root / (out.name + ".log")
    env = {**os.environ, "EXTRA_PKGS": ",".join(EXTRA_PACKAGES)}
    with open(log, "wb") as f:
        res = subprocess.run(
            [str(script), str(out), str(debs_dir(root, arch, suite)), str(key_path), arch, suite],
            stdout=f, stderr=subprocess.STDOUT, env=env, timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
    if res.returncode != 0:
        raise LabImageError("building the %s lab image failed (exit %d); see %s" % (arch, res.returncode, log))
    return LabImage(out, time.monotonic() - t0, False)
