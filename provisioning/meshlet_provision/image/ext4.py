"""The ext4 root partition, edited in place inside the image with debugfs (no mounts).

debugfs opens the filesystem at a byte offset (`IMG?offset=N`), runs a command file, and
exits 0 even when a command failed; failures only show on stderr.  So edits are batched
into two passes: the tolerant one (mkdir of directories that may exist, rm of files that
may not) and the strict one (writes, modes, links), where any message on stderr is an error.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from . import tools
from .errors import ImageError, ToolError

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+@:,=/-]*$")
_BANNER = re.compile(r"^debugfs [0-9.]+ \(")


def _check(path: str) -> str:
    if not _SAFE_PATH.match(path) or "//" in path or "/../" in path + "/":
        raise ImageError(
            "refusing to write %r into the root filesystem: unexpected characters in the path" % path
        )
    return path


class Ext4Fs:
    """The ext4 filesystem at byte `offset` of `image`."""

    def __init__(self, image: Path, offset: int) -> None:
        self.image, self.offset = image, offset

    @property
    def _spec(self) -> str:
        return "%s?offset=%d" % (self.image, self.offset)

    @staticmethod
    def mkfs_from_dir(image: Path, offset: int, size: int, tree: Path, label: str = "meshlet-root") -> Ext4Fs:
        """mke2fs -d: an ext4 of `size` bytes at `offset`, filled from `tree` (owners and modes kept)."""
        tools.run(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                label,
                "-E",
                "offset=%d,root_owner=0:0" % offset,
                "-d",
                str(tree),
                str(image),
                "%dk" % (size // 1024),
            ],
            what="creating the root filesystem from %s" % tree,
        )
        return Ext4Fs(image, offset)

    def _debugfs(self, script: str, *, write: bool, strict: bool) -> str:
        argv = ["debugfs"] + (["-w"] if write else []) + ["-f", "-", self._spec]
        exe = tools.need("debugfs")
        proc = subprocess.run([exe, *argv[1:]], input=script.encode(), capture_output=True, check=False)
        errors = [
            line
            for line in proc.stderr.decode(errors="replace").splitlines()
            if line.strip() and not _BANNER.match(line)
        ]
        if strict and any("Could not allocate" in e for e in errors):
            raise ImageError(
                "the root filesystem in the image is full (%d+ files did not fit): use an image with free space "
                "in its root partition, or grow it first (parted + resize2fs on a copy)" % len(errors)
            )
        if proc.returncode != 0 or (strict and errors):
            raise ToolError(
                "debugfs failed on the root filesystem: %s"
                % " | ".join(errors[-5:] or ["exit %d" % proc.returncode])
            )
        return proc.stdout.decode(errors="replace")

    # Reading.

    def read(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="meshlet-ext4-") as tmp:
            dst = Path(tmp) / "f"
            self._debugfs('dump "%s" "%s"\n' % (_check(path), dst), write=False, strict=True)
            if not dst.exists():
                raise ImageError("%s is not in the root filesystem" % path)
            return dst.read_bytes()

    def listdir(self, path: str) -> dict[str, int]:
        """name -> mode (with the file-type bits) for the entries of a directory; {} if missing."""
        out = self._debugfs('ls -p "%s"\n' % _check(path), write=False, strict=False)
        entries: dict[str, int] = {}
        for line in out.splitlines():
            fields = line.split("/")
            # /inode/mode/uid/gid/name/size/
            if len(fields) >= 7 and fields[0] == "" and fields[1].isdigit():
                name = "/".join(fields[5:-2])
                if name not in (".", ".."):
                    entries[name] = int(fields[2], 8)
        return entries

    def stat(self, path: str) -> tuple[int, int, int] | None:
        """(mode, uid, gid) of a path, or None if it does not exist."""
        out = self._debugfs('ls -p "%s"\n' % _check(path.rsplit("/", 1)[0] or "/"), write=False, strict=False)
        name = path.rstrip("/").rsplit("/", 1)[-1]
        for line in out.splitlines():
            f = line.split("/")
            if len(f) >= 7 and f[0] == "" and f[1].isdigit() and "/".join(f[5:-2]) == name:
                return int(f[2], 8), int(f[3]), int(f[4])
        return None

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def edit(self) -> Ext4Edit:
        return Ext4Edit(self)


class Ext4Edit:
    """A batch of edits, applied by commit() in two debugfs runs (see the module docstring)."""

    def __init__(self, fs: Ext4Fs) -> None:
        self.fs = fs
        self._tmp = tempfile.TemporaryDirectory(prefix="meshlet-ext4-")
        self._n = 0
        self._dirs: set[str] = set()
        self._tolerant: list[str] = []
        self._strict: list[str] = []

    def mkdir(self, path: str, mode: int | None = None) -> None:
        """mkdir -p (new directories 0755); with a mode, the last directory gets it even if it existed."""
        cur = ""
        for part in [p for p in _check(path).split("/") if p]:
            cur += "/" + part
            if cur not in self._dirs:
                self._dirs.add(cur)
                self._tolerant.append('mkdir "%s"' % cur)
        if mode is not None and cur:
            self._strict.append('sif "%s" mode 0%o' % (cur, 0o040000 | mode))

    def write(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self._n += 1
        src = Path(self._tmp.name) / ("f%d" % self._n)
        src.write_bytes(data)
        self.put(src, path, mode, uid, gid)

    def put(self, src: Path, path: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        """Create or replace `path` with the host file `src`."""
        path = _check(path)
        self.mkdir(path.rsplit("/", 1)[0] or "/")
        self._tolerant.append('rm "%s"' % path)
        self._strict.append('write "%s" "%s"' % (src, path))
        self._strict.append('sif "%s" mode 0%o' % (path, 0o100000 | mode))
        self._strict.append('sif "%s" uid %d' % (path, uid))
        self._strict.append('sif "%s" gid %d' % (path, gid))

    def symlink(self, path: str, target: str) -> None:
        path = _check(path)
        self.mkdir(path.rsplit("/", 1)[0] or "/")
        self._tolerant.append('rm "%s"' % path)
        self._strict.append('symlink "%s" "%s"' % (path, _check(target)))

    def remove(self, path: str) -> None:
        self._tolerant.append('rm "%s"' % _check(path))

    def commit(self) -> int:
        """Apply everything; returns the number of commands run."""
        try:
            if self._tolerant:
                self.fs._debugfs("\n".join(self._tolerant) + "\n", write=True, strict=False)
            if self._strict:
                self.fs._debugfs("\n".join(self._strict) + "\n", write=True, strict=True)
            return len(self._tolerant) + len(self._strict)
        finally:
            self._tmp.cleanup()
