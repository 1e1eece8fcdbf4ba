"""The from-scratch base image: Debian bookworm by mmdebstrap, made into an MBR disk, cached.

The slow part (mmdebstrap under qemu-user, ~4 minutes for arm64) runs once per recipe: the
result is CACHE/base-<arch>-<suite>-<recipe hash>/base.img, a disk image with no meshlet
in it.  Every provisioned image is a copy of it with the meshlet layer applied (layer.py),
exactly as for a vendor image.  The disk: MBR, a 256 MiB FAT32 boot partition "bootfs"
(kernel, initrd, Raspberry Pi device trees; cloud-init and enrollment files are added by the
layer) from sector 8192, then the ext4 root "meshlet-root" made by mke2fs -d.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import tools
from .binfmt import ensure_binfmt
from .errors import ImageError, ToolError
from .ext4 import Ext4Fs
from .fat import FatFs
from .mbr import SECTOR, TYPE_FAT32_LBA, TYPE_LINUX, build_mbr
from .progress import Progress
from .recipe import MIRROR, RECIPE_DIR, SUITE, base_dir, recipe_hash

BOOT_START = 4 << 20
BOOT_SIZE = 256 << 20
ROOT_SLACK = 512 << 20


def base_image(arch: str, cache_dir: Path, progress: Progress, suite: str = SUITE) -> tuple[Path, bool]:
    """(path of the cached base image, whether it was already there), building it if needed."""
    d = base_dir(cache_dir, arch, suite)
    img = d / "base.img"
    if img.exists() and (d / "build.json").exists():
        progress("from-scratch base %s (cached)" % img)
        return img, True
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:
        # Two builds of one recipe (parallel tests) wait for each other instead of racing.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if img.exists() and (d / "build.json").exists():
            return img, True
        _build(d, arch, suite, cache_dir, progress)
    return img, False


def _build(d: Path, arch: str, suite: str, cache_dir: Path, progress: Progress) -> None:
    if os.geteuid() != 0:
        raise ImageError(
            "--from-scratch runs mmdebstrap as root (it installs packages under qemu-user): run it as root"
        )
    for prog in ("mmdebstrap", "arch-test", "mkfs.fat", "mke2fs", "mcopy"):
        tools.need(prog)
    ensure_binfmt(arch)
    tree = d / "tree"
    t0 = time.monotonic()
    if not (tree / "tree.done").exists():
        progress(
            "from-scratch: mmdebstrap Debian %s %s (cold build: 4 minutes under qemu-user on an idle 2-core machine, 12 on a busy one)"
            % (suite, arch)
        )
        _run_recipe(tree, arch, suite, cache_dir / "debs" / arch, progress)
        (tree / "tree.done").write_text("ok\n")
    else:
        progress("from-scratch: reusing the finished tree in %s" % tree)
    t1 = time.monotonic()
    progress("from-scratch: assembling the disk image")
    info: dict[str, object] = dict(assemble(tree, d / "base.img.partial", progress))
    os.replace(d / "base.img.partial", d / "base.img")
    t2 = time.monotonic()
    info.update(
        arch=arch,
        suite=suite,
        recipe=recipe_hash(arch, suite),
        mmdebstrap_s=round(t1 - t0, 1),
        assemble_s=round(t2 - t1, 1),
    )
    (d / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(tree, ignore_errors=True)
    progress("from-scratch: base image built in %.0f s: %s" % (t2 - t0, d / "base.img"))


def _run_recipe(tree: Path, arch: str, suite: str, debs: Path, progress: Progress) -> None:
    script = RECIPE_DIR / "build-base.sh"
    proc = subprocess.Popen(
        ["bash", str(script), str(tree), arch, suite, MIRROR, str(debs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-8:]
        # mmdebstrap's "I: ..." steps are the progress of the long part.
        if line.startswith(("I: running", "I: downloading", "I: installing", "I: extracting", "build-base:")):
            progress("mmdebstrap: " + line[:160])
    if proc.wait() != 0:
        raise ToolError("the from-scratch recipe failed (exit %d): %s" % (proc.returncode, " | ".join(tail)))


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-sxb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def assemble(tree: Path, out: Path, progress: Progress) -> dict[str, int]:
    """tree/rootfs + tree/boot -> an MBR disk image (sparse) at out."""
    rootfs, boot_src = tree / "rootfs", tree / "boot"
    used = _du(rootfs)
    root_size = ((used + used // 5 + ROOT_SLACK) + (1 << 20) - 1) & ~((1 << 20) - 1)
    root_start = BOOT_START + BOOT_SIZE
    total = root_start + root_size
    if out.exists():
        out.unlink()
    with open(out, "wb") as f:
        f.truncate(total)
        f.write(
            build_mbr(
                [
                    (TYPE_FAT32_LBA, BOOT_START // SECTOR, BOOT_SIZE // SECTOR, True),
                    (TYPE_LINUX, root_start // SECTOR, root_size // SECTOR, False),
                ],
                int.from_bytes(os.urandom(4), "little"),
            )
        )
    fat = FatFs.mkfs(out, BOOT_START, BOOT_SIZE)
    progress("from-scratch: boot partition (kernel, initrd, device trees)")
    fat.put(boot_src / "vmlinuz", "/vmlinuz")
    fat.put(boot_src / "initrd.img", "/initrd.img")
    fat.put(boot_src / "kernel.txt", "/kernel.txt")
    dtbs = sorted((boot_src / "dtbs").glob("*.dtb"))
    if dtbs:
        fat.mkdir("/dtbs")
        tools.run(
            ["mcopy", "-i", "%s@@%d" % (out, BOOT_START), "-o", "-n", *[str(p) for p in dtbs], "::/dtbs/"],
            env={"MTOOLS_SKIP_CHECK": "1"},
            what="copying device trees",
        )
    progress("from-scratch: root filesystem (mke2fs -d, %d MiB of files)" % (used >> 20))
    Ext4Fs.mkfs_from_dir(out, root_start, root_size, rootfs)
    return {"image_bytes": total, "rootfs_bytes": used}
