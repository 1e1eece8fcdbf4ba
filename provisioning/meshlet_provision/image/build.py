"""build_image: a copy of a base image (vendor or from-scratch) with the meshlet layer applied."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import layer, scratch
from .cloudinit import WifiConfig
from .enrollment import Enrollment, check_hostname, default_hostname
from .errors import ImageError
from .mbr import Partition
from .progress import Progress, copy_sparse, decompress_xz, quiet


def default_cache_dir() -> Path:
    return Path(os.environ.get("MESHLET_IMAGE_CACHE") or "/var/tmp/meshlet-images")


@dataclass(frozen=True)
class BootFiles:
    """Copies of the boot partition's kernel, initrd and the board's device tree, for QEMU's
    -kernel/-initrd/-dtb (None when the partition has no such file)."""

    kernel: Path | None
    initrd: Path | None
    dtb: Path | None


@dataclass(frozen=True)
class ImageResult:
    path: Path
    boot_files: BootFiles
    root_partition: Partition
    boot_partition: Partition
    cmdline: str  # the boot partition's cmdline.txt (root=LABEL=meshlet-root ... for from-scratch)
    hostname: str
    python: str
    seconds: float
    cache_hit: bool  # from-scratch: the base image came from the cache
    base: Path
    ssh_key: Path | None = None  # lab images: the private key whose public half root accepts
    steps: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def p(x: Path | None) -> str | None:
            return str(x) if x is not None else None

        return {
            "path": str(self.path),
            "boot_files": {
                "kernel": p(self.boot_files.kernel),
                "initrd": p(self.boot_files.initrd),
                "dtb": p(self.boot_files.dtb),
            },
            "root_partition": {
                "number": self.root_partition.number,
                "start": self.root_partition.start,
                "size": self.root_partition.size,
            },
            "boot_partition": {
                "number": self.boot_partition.number,
                "start": self.boot_partition.start,
                "size": self.boot_partition.size,
            },
            "cmdline": self.cmdline,
            "hostname": self.hostname,
            "python": self.python,
            "seconds": round(self.seconds, 1),
            "cache_hit": self.cache_hit,
            "base": str(self.base),
            "ssh_key": p(self.ssh_key),
            "steps": {k: round(v, 1) for k, v in self.steps.items()},
        }


def build_image(
    board: Any,
    out_path: str | Path,
    *,
    base: str | Path | None = None,
    from_scratch: bool = False,
    enrollment: Enrollment,
    hostname: str | None = None,
    wifi: WifiConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress = quiet,
    lab: bool = False,
) -> ImageResult:
    """Write a provisioned image for `board` (a Board or a board id) to out_path (created 0600:
    it holds the enrollment secret).  Exactly one of base= (a .img or .img.xz) and from_scratch=True."""
    t0 = time.monotonic()
    if isinstance(board, str):
        from ..boards import BoardError, load_board

        try:
            board = load_board(board)
        except BoardError as e:
            raise ImageError(str(e)) from None
    if (base is None) == (not from_scratch):
        raise ImageError("give exactly one of --base IMG and --from-scratch")
    out = Path(out_path)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = check_hostname(hostname if hostname else default_hostname(board.id))
    steps: dict[str, float] = {}

    cache_hit = False
    if from_scratch:
        src, cache_hit = scratch.base_image(board.arch, cache, progress)
    else:
        src = Path(base)  # type: ignore[arg-type]
        if not src.is_file():
            raise ImageError(
                "base image %s does not exist: download Raspberry Pi OS Lite (.img.xz) first" % src
            )
    steps["base"] = time.monotonic() - t0

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    t = time.monotonic()
    try:
        if src.name.endswith(".xz"):
            decompress_xz(src, partial, progress)
        else:
            copy_sparse(src, partial, progress)
        steps["copy"] = time.monotonic() - t
        t = time.monotonic()
        key_pub, key = _lab_key(cache, progress) if lab else (None, None)
        lay = layer.apply(partial, board, enrollment, name, wifi, cache, progress, key_pub)
        steps["layer"] = time.monotonic() - t
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    dtb = str(board.qemu.get("dtb") or "") if isinstance(board.qemu, dict) else ""
    kernel, initrd, dtb_path = layer.extract_boot_files(
        out, lay.boot, dtb or board.dtb, out.with_name(out.name + ".boot")
    )
    seconds = time.monotonic() - t0
    progress("image ready in %.1f s%s: %s" % (seconds, " (base from cache)" if cache_hit else "", out))
    return ImageResult(
        path=out,
        boot_files=BootFiles(kernel, initrd, dtb_path),
        root_partition=lay.root,
        boot_partition=lay.boot,
        cmdline=lay.cmdline,
        hostname=name,
        python=lay.python,
        seconds=seconds,
        cache_hit=cache_hit,
        base=src,
        ssh_key=key,
        steps=steps,
    )


def _lab_key(cache: Path, progress: Progress) -> tuple[str, Path]:
    """The lab SSH key pair, made once per cache (root's authorized key in --lab images)."""
    key = cache / "lab" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        progress("lab: creating the SSH key %s" % key)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "meshlet-lab", "-f", str(key)], check=True
        )
    return key.with_name(key.name + ".pub").read_text(), key
