"""Progress lines for the long steps, and the copies and decompression that report them.

A progress callback takes one line of text; the CLI prints it on stderr, tests collect it.
Copies are sparse-aware (runs of zero blocks become holes), so a 2 GB image with 600 MB of
data costs 600 MB of disk and of write time.
"""

from __future__ import annotations

import lzma
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import ImageError

Progress = Callable[[str], None]

CHUNK = 1 << 20


def to_stderr(line: str) -> None:
    print("meshlet-provision image: " + line, file=sys.stderr, flush=True)


def quiet(line: str) -> None:
    pass


class _Percent:
    """Emits "what: N%" at most every 10 % (and at 100 %), so logs stay short."""

    def __init__(self, progress: Progress, what: str, total: int) -> None:
        self.progress, self.what, self.total, self.last = progress, what, total, -10

    def update(self, done: int) -> None:
        pct = 100 if self.total <= 0 else min(100, done * 100 // self.total)
        if pct >= self.last + 10 or (pct == 100 and self.last != 100):
            self.last = pct
            self.progress("%s: %d%%" % (self.what, pct))


def _write_sparse(dst: BinaryIO, chunk: bytes) -> None:
    if chunk.count(0) != len(chunk):
        dst.write(chunk)
    else:
        dst.seek(len(chunk), os.SEEK_CUR)


def copy_sparse(src: Path, dst: Path, progress: Progress, what: str = "copying") -> None:
    """src -> dst with holes for zero blocks; dst is created 0600 (provisioned images hold secrets).

    The source's own holes are skipped without reading them (SEEK_DATA/SEEK_HOLE), so copying
    the cached 1.5 GB base costs its 0.6 GB of data.
    """
    total = src.stat().st_size
    meter = _Percent(progress, "%s %s" % (what, src.name), total)
    with open(src, "rb") as fin, _open_private(dst) as fout:
        for start, end in _data_extents(fin.fileno(), total):
            fin.seek(start)
            fout.seek(start)
            pos = start
            while pos < end:
                chunk = fin.read(min(CHUNK, end - pos))
                if not chunk:
                    break
                _write_sparse(fout, chunk)
                pos += len(chunk)
                meter.update(pos)
        fout.truncate(total)
    meter.update(total)


def _data_extents(fd: int, total: int) -> list[tuple[int, int]]:
    """(start, end) of the regions holding data; the whole file where holes cannot be asked for."""
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < total:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, end))
            pos = end
    except (AttributeError, OSError):
        return [(0, total)]
    return extents


def decompress_xz(src: Path, dst: Path, progress: Progress) -> None:
    """Stream-decompress an .img.xz into dst (sparse, 0600); percent is of the compressed input read."""
    total = src.stat().st_size
    meter = _Percent(progress, "decompressing %s" % src.name, total)
    dec = lzma.LZMADecompressor()
    written = 0
    try:
        with open(src, "rb") as fin, _open_private(dst) as fout:
            while True:
                raw = fin.read(CHUNK)
                if not raw:
                    break
                while True:
                    data = dec.decompress(raw, CHUNK)
                    raw = b""
                    if data:
                        _write_sparse(fout, data)
                        written += len(data)
                    if dec.eof or dec.needs_input:
                        break
                meter.update(fin.tell())
                if dec.eof:
                    break
            fout.truncate(written)
    except lzma.LZMAError as e:
        raise ImageError("%s is not a valid .xz file (%s): download it again" % (src, e)) from None
    if not dec.eof:
        raise ImageError("%s ends before the end of its xz stream: the download is incomplete" % src)
    meter.update(total)


def _open_private(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")
