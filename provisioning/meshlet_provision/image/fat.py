"""The FAT boot partition, read and written in place inside the image with mtools (no mounts)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import tools
from .errors import ToolError

_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


class FatFs:
    """The FAT filesystem at byte `offset` of `image` (mtools' IMG@@OFFSET syntax)."""

    def __init__(self, image: Path, offset: int) -> None:
        self.image, self.offset = image, offset

    @property
    def _spec(self) -> str:
        return "%s@@%d" % (self.image, self.offset)

    def _run(self, *argv: str, what: str = "") -> bytes:
        return tools.run(
            [argv[0], "-i", self._spec, *argv[1:]], env=_ENV, what=what or "on the boot partition"
        )

    @staticmethod
    def mkfs(image: Path, offset: int, size: int, label: str = "bootfs") -> FatFs:
        """A fresh FAT filesystem of `size` bytes at `offset` (mkfs.fat --offset, sectors of 512).

        FAT32 when the size allows 65525+ clusters (readers, mtools among them, decide the FAT
        type by the cluster count alone), with the largest cluster that keeps above that; FAT16
        below (small test images).
        """
        sectors = size // 512
        spc = 8
        while spc > 1 and sectors // spc < 66000:
            spc //= 2
        fat_args = ["-F", "32", "-s", str(spc)] if sectors // spc >= 66000 else ["-F", "16"]
        tools.run(
            [
                "mkfs.fat",
                *fat_args,
                "-n",
                label,
                "--offset",
                str(offset // 512),
                str(image),
                str(size // 1024),
            ],
            what="creating the boot partition",
        )
        return FatFs(image, offset)

    def listdir(self, path: str = "/") -> list[str]:
        """Names in a directory (empty list if it does not exist)."""
        try:
            out = self._run("mdir", "-b", "::" + path)
        except ToolError:
            return []
        names = []
        for line in out.decode(errors="replace").splitlines():
            line = line.strip()
            if line:
                names.append(line.rstrip("/").rsplit("/", 1)[-1])
        return [n for n in names if n not in (".", "..")]

    def exists(self, path: str) -> bool:
        parent, _, name = path.rstrip("/").rpartition("/")
        return name.lower() in (n.lower() for n in self.listdir(parent or "/"))

    def read(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="meshlet-fat-") as tmp:
            dst = Path(tmp) / "f"
            self._run("mcopy", "-n", "::" + path, str(dst), what="reading %s from the boot partition" % path)
            return dst.read_bytes()

    def mkdir(self, path: str) -> None:
        """mkdir -p."""
        cur = ""
        for part in [p for p in path.split("/") if p]:
            cur += "/" + part
            if not self.exists(cur):
                self._run("mmd", "::" + cur, what="creating %s on the boot partition" % cur)

    def write(self, path: str, data: bytes) -> None:
        """Create or replace a file (parents created)."""
        parent = path.rpartition("/")[0]
        if parent:
            self.mkdir(parent)
        with tempfile.TemporaryDirectory(prefix="meshlet-fat-") as tmp:
            src = Path(tmp) / "f"
            src.write_bytes(data)
            src.chmod(0o600)
            self._run(
                "mcopy", "-o", "-n", str(src), "::" + path, what="writing %s to the boot partition" % path
            )

    def put(self, src: Path, path: str) -> None:
        """Copy a host file in (parents created)."""
        parent = path.rpartition("/")[0]
        if parent:
            self.mkdir(parent)
        self._run("mcopy", "-o", "-n", str(src), "::" + path, what="writing %s to the boot partition" % path)

    def get(self, path: str, dst: Path) -> None:
        self._run(
            "mcopy", "-o", "-n", "::" + path, str(dst), what="reading %s from the boot partition" % path
        )

    def delete(self, path: str) -> None:
        if self.exists(path):
            self._run("mdel", "::" + path, what="deleting %s from the boot partition" % path)
