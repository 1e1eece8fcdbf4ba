"""The from-scratch path: a cached Debian base image (mmdebstrap), provisioned like any base.

Slow: the first run builds the base (about 4 minutes under qemu-user, cached afterwards in
$MESHLET_IMAGE_CACHE or /var/tmp/meshlet-images); later runs only copy it and apply the layer.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from meshlet_provision.image import Enrollment, build_image, default_cache_dir
from meshlet_provision.image.ext4 import Ext4Fs
from meshlet_provision.image.fat import FatFs
from meshlet_provision.image.recipe import base_dir, recipe_hash

needs_mmdebstrap = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mmdebstrap") is None, reason="needs root and mmdebstrap"
)


def test_recipe_hash_follows_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "packages.txt").write_text("python3\n")
    first = recipe_hash("arm64", recipe_dir=tmp_path)
    assert recipe_hash("armhf", recipe_dir=tmp_path) != first
    (tmp_path / "packages.txt").write_text("python3\ndropbear\n")
    assert recipe_hash("arm64", recipe_dir=tmp_path) != first
    assert base_dir(Path("/c"), "arm64").name.startswith("base-arm64-bookworm-")


@pytest.mark.slow
@needs_mmdebstrap
def test_from_scratch_arm64(tmp_path: Path) -> None:
    lines: list[str] = []
    result = build_image(
        "qemu-virt-arm64",
        tmp_path / "guest.img",
        from_scratch=True,
        enrollment=Enrollment("http://10.0.2.2:8080", "mlt-auth-test"),
        hostname="guest-1",
        progress=lines.append,
        lab=True,
    )
    assert result.base.parent == base_dir(default_cache_dir(), "arm64")
    assert result.python == "3.11"
    assert result.cmdline.startswith("root=LABEL=meshlet-root rw rootwait console=ttyAMA0,115200")
    assert result.boot_files.kernel is not None and result.boot_files.kernel.stat().st_size > 1 << 20
    assert result.boot_files.initrd is not None and result.boot_files.initrd.stat().st_size > 1 << 20
    fs = Ext4Fs(result.path, result.root_partition.start)
    assert stat.S_ISLNK(fs.listdir("/etc/systemd/system/multi-user.target.wants")["meshletd.service"])
    assert fs.exists("/usr/local/lib/python3.11/dist-packages/meshlet_agent/cli/__init__.py")
    assert fs.exists("/usr/bin/python3.11") and fs.exists("/usr/sbin/dropbear")
    assert b"LABEL=bootfs /boot/firmware vfat" in fs.read("/etc/fstab")
    fat = FatFs(result.path, result.boot_partition.start)
    assert fat.read("/meshlet/authkey") == b"mlt-auth-test\n"
    # A second image from the same recipe comes from the cache.
    again = build_image(
        "qemu-virt-arm64",
        tmp_path / "guest2.img",
        from_scratch=True,
        enrollment=Enrollment("http://10.0.2.2:8080"),
        progress=lines.append,
    )
    assert again.cache_hit and again.base == result.base
    assert not FatFs(again.path, again.boot_partition.start).exists("/meshlet/authkey")
