"""Partition tables as the image builder reads and writes them (MBR read/write, GPT read)."""

from __future__ import annotations

import io
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshlet_provision.image.errors import PartitionTableError
from meshlet_provision.image.mbr import (
    GPT_BASIC_DATA,
    GPT_LINUX_FS,
    SECTOR,
    TYPE_FAT32_LBA,
    TYPE_LINUX,
    build_mbr,
    find_boot_and_root,
    parse_mbr,
    read_table,
)

MiB = 1 << 20


def raspios_like() -> bytes:
    """The Raspberry Pi OS layout: FAT32 (0x0c) from 4 MiB, 512 MiB; Linux root right after."""
    return build_mbr(
        [(TYPE_FAT32_LBA, 8192, 1048576, False), (TYPE_LINUX, 1056768, 4194304, False)], 0x6C3B8A1E
    )


def test_raspios_layout_round_trips() -> None:
    table = parse_mbr(raspios_like())
    assert table.scheme == "mbr" and table.disk_id == "6c3b8a1e"
    boot, root = find_boot_and_root(table)
    assert (boot.number, boot.type, boot.start, boot.size, boot.kind) == (
        1,
        "0x0c",
        4 * MiB,
        512 * MiB,
        "fat",
    )
    assert (root.number, root.type, root.start, root.kind) == (2, "0x83", 516 * MiB, "linux")


def test_entry_bytes_are_the_standard_layout() -> None:
    mbr = build_mbr([(TYPE_FAT32_LBA, 8192, 2048, True)], 1)
    # status, CHS "use LBA", type, CHS, LBA start, sector count; 55 aa at the end.
    assert mbr[446:462] == bytes.fromhex("80feffff0cfeffff") + struct.pack("<II", 8192, 2048)
    assert mbr[510:] == b"\x55\xaa" and mbr[440:444] == b"\x01\x00\x00\x00"


def test_errors_name_the_problem() -> None:
    with pytest.raises(PartitionTableError, match="still compressed"):
        parse_mbr(bytes(512))
    with pytest.raises(PartitionTableError, match="too short"):
        parse_mbr(b"\x55\xaa")
    with pytest.raises(PartitionTableError, match="truncated download"):
        parse_mbr(raspios_like(), image_size=100 * MiB)
    with pytest.raises(PartitionTableError, match="overlap"):
        build_mbr([(TYPE_FAT32_LBA, 2048, 4096, False), (TYPE_LINUX, 4096, 4096, False)], 0)
    with pytest.raises(PartitionTableError, match="FAT boot partition and a Linux root"):
        find_boot_and_root(parse_mbr(build_mbr([(TYPE_LINUX, 2048, 4096, False)], 0)))


def gpt_image() -> bytes:
    """A protective MBR, a GPT header at LBA 1 and 128 entries at LBA 2: ESP-like FAT, then Linux."""
    disk = bytearray(40 * SECTOR)
    disk[:SECTOR] = build_mbr([(0xEE, 1, 39, False)], 0)
    hdr = bytearray(SECTOR)
    hdr[0:8] = b"EFI PART"
    hdr[56:72] = uuid.UUID("11111111-2222-3333-4444-555555555555").bytes_le
    struct.pack_into("<QII", hdr, 72, 2, 128, 128)
    disk[SECTOR : 2 * SECTOR] = hdr
    for i, (t, first, last) in enumerate([(GPT_BASIC_DATA, 34, 35), (GPT_LINUX_FS, 36, 39)]):
        e = bytearray(128)
        e[0:16] = uuid.UUID(t).bytes_le
        struct.pack_into("<QQ", e, 32, first, last)
        disk[2 * SECTOR + 128 * i : 2 * SECTOR + 128 * (i + 1)] = e
    return bytes(disk)


def test_gpt_is_read_behind_the_protective_mbr() -> None:
    disk = gpt_image()
    table = read_table(io.BytesIO(disk), len(disk))
    assert table.scheme == "gpt" and table.disk_id == "11111111-2222-3333-4444-555555555555"
    boot, root = find_boot_and_root(table)
    assert (boot.start, boot.size, root.start, root.size) == (
        34 * SECTOR,
        2 * SECTOR,
        36 * SECTOR,
        4 * SECTOR,
    )


@settings(max_examples=400)
@given(st.binary(min_size=0, max_size=1024))
def test_garbage_mbr_is_a_typed_error(data: bytes) -> None:
    try:
        table = parse_mbr(data, image_size=1 << 40)
    except PartitionTableError:
        return
    for p in table.partitions:
        assert p.start > 0 and p.size > 0


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)
        ),
        max_size=4,
    ),
    st.integers(0, 1 << 34),
)
def test_random_entries_with_signature_are_a_table_or_a_typed_error(
    entries: list[tuple[int, int, int, int]], size: int
) -> None:
    mbr = bytearray(512)
    for i, (status, ptype, lba, count) in enumerate(entries):
        mbr[446 + 16 * i : 462 + 16 * i] = struct.pack(
            "<B3sB3sII", status, b"\0\0\0", ptype, b"\0\0\0", lba, count
        )
    mbr[510:] = b"\x55\xaa"
    try:
        table = parse_mbr(bytes(mbr), size)
    except PartitionTableError:
        return
    for p in table.partitions:
        assert p.end <= size


@settings(max_examples=200)
@given(st.binary(min_size=0, max_size=8 * SECTOR))
def test_garbage_after_a_protective_mbr_is_a_typed_error(rest: bytes) -> None:
    disk = build_mbr([(0xEE, 1, 100, False)], 0) + rest
    try:
        read_table(io.BytesIO(disk), len(disk))
    except PartitionTableError:
        pass
