"""The bounded reader and writer, and the address helpers every codec shares."""

from meshlet.errors import LocalProtocolError, RemoteProtocolError
from meshlet.wire import Reader, Writer, format_addr, format_ip, ip16, ip_compact, parse_addr, parse_ip
from meshlet_testing.raises import raises


def test_reader_reads_big_and_little_endian():
    r = Reader(bytes(range(1, 24)))
    assert r.u8() == 1
    assert r.u16() == 0x0203
    assert r.u32() == 0x04050607
    assert r.u64() == 0x08090A0B0C0D0E0F
    assert r.u32le() == 0x13121110
    assert r.take(2) == b"\x14\x15"
    assert r.remaining() == 2
    assert r.rest() == b"\x16\x17"
    r.expect_end()


def test_reader_never_reads_past_its_end():
    r = Reader(b"\x00\x01\x02\x03\x04", 1, 3)
    assert r.u16() == 0x0102
    raises(RemoteProtocolError, "short", r.u8)
    raises(RemoteProtocolError, "short", Reader(b"abc").take, 4)
    raises(RemoteProtocolError, "short", Reader(b"abc").take, -1)


def test_reader_reports_trailing_bytes():
    r = Reader(b"ab")
    r.u8()
    raises(RemoteProtocolError, "trailing", r.expect_end)


def test_writer_checks_ranges_and_fixed_lengths():
    assert Writer().u8(1).u16(2).u32le(3).u64(4).raw(b"x").getvalue() == (
        b"\x01\x00\x02\x03\x00\x00\x00" + b"\x00" * 7 + b"\x04x"
    )
    raises(LocalProtocolError, "out_of_range", Writer().u8, 256)
    raises(LocalProtocolError, "out_of_range", Writer().u16, -1)
    raises(LocalProtocolError, "bad_length", Writer().fixed, b"abc", 4)


def test_ip16_maps_and_unmaps_ipv4():
    v4 = b"\x01\x02\x03\x04"
    assert ip16(v4) == b"\x00" * 10 + b"\xff\xff" + v4
    assert ip_compact(ip16(v4)) == v4
    v6 = parse_ip("2001:db8::1")
    assert ip16(v6) == v6 and ip_compact(v6) == v6


def test_parse_and_format_addresses():
    assert parse_ip("192.0.2.1") == b"\xc0\x00\x02\x01"
    assert parse_ip("::") == bytes(16)
    assert parse_ip("::ffff:1.2.3.4") == ip16(b"\x01\x02\x03\x04")
    assert parse_ip("fed0::12") == b"\xfe\xd0" + bytes(13) + b"\x12"
    assert format_ip(parse_ip("2001:db8:0:0:1:0:0:1")) == "2001:db8::1:0:0:1"
    assert format_ip(parse_ip("fd7a:115c:a1e0::1")) == "fd7a:115c:a1e0::1"
    assert parse_addr("1.2.3.4:41641") == (b"\x01\x02\x03\x04", 41641)
    assert parse_addr("[2001:db8::1]:41641") == (parse_ip("2001:db8::1"), 41641)
    assert format_addr(parse_ip("2001:db8::1"), 7) == "[2001:db8::1]:7"
    assert format_addr(b"\x7f\x03\x03\x28", 900) == "127.3.3.40:900"


def test_bad_addresses_are_rejected():
    for text in ("1.2.3", "1.2.3.256", "01.2.3.4", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "g::1", "fe80::1%eth0"):
        raises(RemoteProtocolError, "bad_ip", parse_ip, text)
    for text in ("1.2.3.4", "2001:db8::1:80", "1.2.3.4:99999", "[::1]80"):
        raises(RemoteProtocolError, "bad_addr", parse_addr, text)
