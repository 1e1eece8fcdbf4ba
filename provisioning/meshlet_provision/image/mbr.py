"""MBR (read and write) and GPT (read) partition tables, as bytes in and bytes out.

Raspberry Pi OS and the Debian SBC images are MBR disks: a FAT boot partition the firmware
or U-Boot reads, then the ext4 root.  Both are found here so that mtools and e2fsprogs can
work on them at a byte offset inside the image file: no loop devices, so images build in
containers and CI.  GPT is read only (some generic arm64 images use it).
"""

from __future__ import annotations

import itertools
import struct
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from .errors import PartitionTableError

SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"
GPT_MAGIC = b"EFI PART"

# MBR type bytes.
TYPE_FAT32_LBA = 0x0C
TYPE_LINUX = 0x83
TYPE_GPT_PROTECTIVE = 0xEE
FAT_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E, 0xEF})
LINUX_TYPES = frozenset({0x83})
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})

# GPT partition type GUIDs.
GPT_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_BASIC_DATA = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
GPT_LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GPT_LINUX_ROOT_ARM64 = "b921b045-1df0-41c3-af44-4c6f280d3fae"
GPT_LINUX_ROOT_ARM = "69dad710-2ce4-4e3c-b16c-21a1d49abed3"


@dataclass(frozen=True)
class Partition:
    """One partition: its number (1-based), type, and where it is in the image, in bytes."""

    number: int
    type: str  # "0x0c" for MBR, the type GUID for GPT
    start: int
    size: int
    bootable: bool = False

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def kind(self) -> str:
        """ "fat", "linux" or "other": what the type says (the content is checked separately)."""
        t = self.type
        if t.startswith("0x"):
            code = int(t, 16)
            if code in FAT_TYPES:
                return "fat"
            if code in LINUX_TYPES:
                return "linux"
            return "other"
        if t in (GPT_ESP, GPT_BASIC_DATA):
            return "fat"
        if t in (GPT_LINUX_FS, GPT_LINUX_ROOT_ARM64, GPT_LINUX_ROOT_ARM):
            return "linux"
        return "other"


@dataclass(frozen=True)
class PartitionTable:
    scheme: str  # "mbr" or "gpt"
    partitions: tuple[Partition, ...]
    disk_id: str  # MBR disk signature as 8 hex digits, or the GPT disk GUID


def parse_mbr(sector0: bytes, image_size: int | None = None) -> PartitionTable:
    """The four primary entries of an MBR.  A protective MBR (type 0xEE) is reported as scheme "gpt"
    with no partitions: the caller then reads the GPT (read_table does)."""
    if len(sector0) < SECTOR:
        raise PartitionTableError(
            "the image is %d bytes, too short for a partition table; is it a whole-disk image (.img)?"
            % len(sector0)
        )
    if sector0[510:512] != MBR_SIGNATURE:
        raise PartitionTableError(
            "no MBR signature (55 aa) in the first sector: not a disk image, or still compressed (.xz?)"
        )
    disk_id = "%08x" % struct.unpack_from("<I", sector0, 440)[0]
    parts: list[Partition] = []
    for i in range(4):
        entry = sector0[446 + 16 * i : 446 + 16 * (i + 1)]
        status, ptype = entry[0], entry[4]
        lba, count = struct.unpack_from("<II", entry, 8)
        if ptype == 0 or count == 0:
            continue
        if status not in (0x00, 0x80):
            raise PartitionTableError(
                "MBR entry %d has status byte 0x%02x (want 00 or 80): damaged table" % (i + 1, status)
            )
        if ptype == TYPE_GPT_PROTECTIVE:
            return PartitionTable("gpt", (), disk_id)
        if lba == 0:
            raise PartitionTableError(
                "MBR entry %d starts at sector 0, over the table itself: damaged table" % (i + 1)
            )
        p = Partition(i + 1, "0x%02x" % ptype, lba * SECTOR, count * SECTOR, status == 0x80)
        _check_inside(p, image_size)
        parts.append(p)
    _check_overlap(parts)
    return PartitionTable("mbr", tuple(parts), disk_id)


def parse_gpt(header: bytes, entries: bytes, image_size: int | None = None) -> PartitionTable:
    """A GPT from its header sector (LBA 1) and its entry array (CRCs are not checked: we only read)."""
    if len(header) < 92 or header[:8] != GPT_MAGIC:
        raise PartitionTableError("protective MBR but no GPT header at sector 1: damaged table")
    disk_guid = str(uuid.UUID(bytes_le=bytes(header[56:72])))
    count, entry_size = struct.unpack_from("<II", header, 80)
    if entry_size < 128 or entry_size > 4096 or count > 1024:
        raise PartitionTableError(
            "GPT header has %d entries of %d bytes: damaged table" % (count, entry_size)
        )
    parts: list[Partition] = []
    for i in range(count):
        e = entries[i * entry_size : i * entry_size + 128]
        if len(e) < 128:
            break
        type_guid = str(uuid.UUID(bytes_le=bytes(e[0:16])))
        if type_guid == "00000000-0000-0000-0000-000000000000":
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        if first == 0 or last < first:
            raise PartitionTableError(
                "GPT entry %d spans sectors %d..%d: damaged table" % (i + 1, first, last)
            )
        p = Partition(i + 1, type_guid, first * SECTOR, (last - first + 1) * SECTOR)
        _check_inside(p, image_size)
        parts.append(p)
    _check_overlap(parts)
    return PartitionTable("gpt", tuple(parts), disk_guid)


def _check_inside(p: Partition, image_size: int | None) -> None:
    if image_size is not None and p.end > image_size:
        raise PartitionTableError(
            "partition %d ends at byte %d but the image has %d bytes: truncated download or copy?"
            % (p.number, p.end, image_size)
        )


def _check_overlap(parts: list[Partition]) -> None:
    ordered = sorted(parts, key=lambda p: p.start)
    for a, b in itertools.pairwise(ordered):
        if b.start < a.end:
            raise PartitionTableError("partitions %d and %d overlap: damaged table" % (a.number, b.number))


def read_table(f: BinaryIO, image_size: int) -> PartitionTable:
    """The partition table of the image open as f (MBR, or GPT behind a protective MBR)."""
    f.seek(0)
    table = parse_mbr(f.read(SECTOR), image_size)
    if table.scheme == "mbr":
        return table
    header = f.read(SECTOR)
    if len(header) < 92 or header[:8] != GPT_MAGIC:
        raise PartitionTableError("protective MBR but no GPT header at sector 1: damaged table")
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if entry_size < 128 or entry_size > 4096 or count > 1024 or entries_lba * SECTOR >= image_size:
        raise PartitionTableError("GPT header points to entries outside the image: damaged table")
    f.seek(entries_lba * SECTOR)
    return parse_gpt(header, f.read(count * entry_size), image_size)


def build_mbr(partitions: list[tuple[int, int, int, bool]], disk_id: int) -> bytes:
    """Sector 0 with up to four primary entries (type, start sector, sector count, bootable).

    CHS fields hold the "use LBA" marker (fe ff ff): every firmware that boots these boards reads LBA.
    """
    if len(partitions) > 4:
        raise PartitionTableError("an MBR holds 4 primary partitions, got %d" % len(partitions))
    mbr = bytearray(SECTOR)
    struct.pack_into("<I", mbr, 440, disk_id & 0xFFFFFFFF)
    spans: list[Partition] = []
    for i, (ptype, lba, count, bootable) in enumerate(partitions):
        if not (0 < ptype < 256) or lba <= 0 or count <= 0 or lba + count > 0xFFFFFFFF:
            raise PartitionTableError(
                "MBR entry %d (type %r, %r+%r sectors) does not fit an MBR" % (i + 1, ptype, lba, count)
            )
        spans.append(Partition(i + 1, "0x%02x" % ptype, lba * SECTOR, count * SECTOR))
        entry = struct.pack(
            "<B3sB3sII", 0x80 if bootable else 0, b"\xfe\xff\xff", ptype, b"\xfe\xff\xff", lba, count
        )
        mbr[446 + 16 * i : 446 + 16 * (i + 1)] = entry
    _check_overlap(spans)
    mbr[510:512] = MBR_SIGNATURE
    return bytes(mbr)


def find_boot_and_root(table: PartitionTable) -> tuple[Partition, Partition]:
    """The FAT boot partition and the Linux root partition, the Raspberry Pi OS layout (first of each)."""
    boot = next((p for p in table.partitions if p.kind == "fat"), None)
    root = next((p for p in table.partitions if p.kind == "linux"), None)
    if boot is None or root is None:
        found = ", ".join("%d:%s" % (p.number, p.type) for p in table.partitions) or "none"
        raise PartitionTableError(
            "expected a FAT boot partition and a Linux root partition (the Raspberry Pi OS layout); "
            "found partitions %s. Use a Raspberry Pi OS / Debian SBC image, or --from-scratch" % found
        )
    return boot, root
