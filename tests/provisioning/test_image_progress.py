"""Copies and decompression of disk images: byte-exact, sparse, private, with percent lines."""

from __future__ import annotations

import lzma
import os
import stat
from pathlib import Path

import pytest

from meshlet_provision.image import ImageError
from meshlet_provision.image.progress import copy_sparse, decompress_xz


def holey_image(path: Path) -> bytes:
    """4 MiB: data, a hole, a block of explicit zeros, data at the very end."""
    with open(path, "wb") as f:
        f.write(b"MBR" + bytes(509))
        f.seek(2 << 20)
        f.write(bytes(1 << 20))
        f.seek((4 << 20) - 5)
        f.write(b"tail!")
    return path.read_bytes()


def test_copy_is_exact_sparse_and_0600(tmp_path: Path) -> None:
    data = holey_image(tmp_path / "src.img")
    lines: list[str] = []
    copy_sparse(tmp_path / "src.img", tmp_path / "dst.img", lines.append)
    dst = tmp_path / "dst.img"
    assert dst.read_bytes() == data
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert dst.stat().st_blocks * 512 < len(data) // 2  # the zeros became holes
    assert lines[-1] == "copying src.img: 100%"


def test_xz_round_trip_and_damage(tmp_path: Path) -> None:
    data = holey_image(tmp_path / "src.img")
    xz = tmp_path / "src.img.xz"
    xz.write_bytes(lzma.compress(data, preset=0))
    lines: list[str] = []
    decompress_xz(xz, tmp_path / "out.img", lines.append)
    assert (tmp_path / "out.img").read_bytes() == data
    assert lines[-1] == "decompressing src.img.xz: 100%"
    (tmp_path / "bad.img.xz").write_bytes(b"not xz at all")
    with pytest.raises(ImageError, match="not a valid .xz file"):
        decompress_xz(tmp_path / "bad.img.xz", tmp_path / "bad.img", lines.append)
    os.truncate(xz, xz.stat().st_size - 10)
    with pytest.raises(ImageError, match="incomplete"):
        decompress_xz(xz, tmp_path / "cut.img", lines.append)
