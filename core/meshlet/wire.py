"""Bounded readers and writers for binary wire formats.

Every codec in the core parses through `Reader`, so "the datagram is shorter
than its header says" is reported in exactly one way: a `RemoteProtocolError`
with reason "short". A Reader never reads past the end it was given, which is
what keeps a lying length field from turning into an out-of-range slice or a
huge allocation.

Integers are big-endian (network order) unless the method name says `le`;
WireGuard is the one little-endian protocol here.

Addresses are plain `bytes` (4 for IPv4, 16 for IPv6) plus an int port: the
core cannot use `ipaddress`, which MicroPython lacks. `ip16` and `ip_compact`
convert to and from the 16-byte IPv4-mapped form that disco, DERP and STUN put
on the wire, and `format_ip` renders an address for logs and JSON (RFC 5952 style).
"""

import struct

from .errors import LocalProtocolError, RemoteProtocolError

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


class Reader:
    """Reads fields off `data[pos:end]`, never beyond `end`.

    Args:
        data: the buffer; bytes, bytearray or memoryview.
        pos: where reading starts.
        end: one past the last byte that may be read; defaults to len(data).
    """

    def __init__(self, data: "bytes | bytearray | memoryview", pos: int = 0, end: int = -1) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end < 0 else end

    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int) -> int:
        start = self.pos
        if n < 0 or self.end - start < n:
            raise RemoteProtocolError("short", "need %d bytes, have %d" % (n, self.end - start))
        self.pos = start + n
        return start

    def take(self, n: int) -> bytes:
        """Returns the next `n` bytes as a fresh `bytes` object."""
        start = self._need(n)
        return bytes(self.data[start : start + n])

    def rest(self) -> bytes:
        """Returns everything up to `end` and leaves the reader empty."""
        return self.take(self.end - self.pos)

    def skip(self, n: int) -> None:
        self._need(n)

    def u8(self) -> int:
        return self.data[self._need(1)]

    def u16(self) -> int:
        return int(struct.unpack_from(">H", self.data, self._need(2))[0])

    def u32(self) -> int:
        return int(struct.unpack_from(">I", self.data, self._need(4))[0])

    def u64(self) -> int:
        return int(struct.unpack_from(">Q", self.data, self._need(8))[0])

    def u32le(self) -> int:
        return int(struct.unpack_from("<I", self.data, self._need(4))[0])

    def u64le(self) -> int:
        return int(struct.unpack_from("<Q", self.data, self._need(8))[0])

    def expect_end(self) -> None:
        """Raises unless every byte up to `end` was consumed."""
        if self.pos != self.end:
            raise RemoteProtocolError("trailing", "%d unexpected bytes" % (self.end - self.pos))


class Writer:
    """Appends fields to a growing bytearray; `getvalue()` returns the bytes."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def u8(self, v: int) -> "Writer":
        self.buf.append(_check_uint(v, 0xFF))
        return self

    def u16(self, v: int) -> "Writer":
        self.buf.extend(struct.pack(">H", _check_uint(v, 0xFFFF)))
        return self

    def u32(self, v: int) -> "Writer":
        self.buf.extend(struct.pack(">I", _check_uint(v, 0xFFFFFFFF)))
        return self

    def u64(self, v: int) -> "Writer":
        self.buf.extend(struct.pack(">Q", _check_uint(v, 0xFFFFFFFFFFFFFFFF)))
        return self

    def u32le(self, v: int) -> "Writer":
        self.buf.extend(struct.pack("<I", _check_uint(v, 0xFFFFFFFF)))
        return self

    def u64le(self, v: int) -> "Writer":
        self.buf.extend(struct.pack("<Q", _check_uint(v, 0xFFFFFFFFFFFFFFFF)))
        return self

    def raw(self, b: "bytes | bytearray | memoryview") -> "Writer":
        self.buf.extend(b)
        return self

    def fixed(self, b: bytes, n: int) -> "Writer":
        """Appends `b`, which must be exactly `n` bytes (a key, a nonce, an ID)."""
        if len(b) != n:
            raise LocalProtocolError("bad_length", "need %d bytes, got %d" % (n, len(b)))
        self.buf.extend(b)
        return self

    def getvalue(self) -> bytes:
        return bytes(self.buf)


def _check_uint(v: int, top: int) -> int:
    # struct on MicroPython silently truncates out-of-range values.
    if v < 0 or v > top:
        raise LocalProtocolError("out_of_range", "%d not in 0..%d" % (v, top))
    return v


def ip16(ip: bytes) -> bytes:
    """The 16-byte wire form of an address: IPv4 becomes ::ffff:a.b.c.d."""
    if len(ip) == 4:
        return _V4_MAPPED_PREFIX + ip
    if len(ip) == 16:
        return ip
    raise LocalProtocolError("bad_ip", "address of %d bytes" % len(ip))


def ip_compact(ip16_: bytes) -> bytes:
    """The inverse of `ip16`: IPv4-mapped addresses shrink back to 4 bytes."""
    if len(ip16_) != 16:
        raise RemoteProtocolError("bad_ip", "address of %d bytes" % len(ip16_))
    if ip16_[:12] == _V4_MAPPED_PREFIX:
        return ip16_[12:]
    return ip16_


def format_ip(ip: bytes) -> str:
    """Renders 4 or 16 address bytes as text, compressing IPv6 zero runs."""
    if len(ip) == 4:
        return "%d.%d.%d.%d" % (ip[0], ip[1], ip[2], ip[3])
    if len(ip) == 16:
        return _format_ip6(ip)
    raise LocalProtocolError("bad_ip", "address of %d bytes" % len(ip))


def _format_ip6(ip: bytes) -> str:
    groups = ["%x" % ((ip[i] << 8) | ip[i + 1]) for i in range(0, 16, 2)]
    # Compress the longest run (>= 2) of zero groups, as RFC 5952 asks.
    best_at, best_len, at, run = -1, 0, -1, 0
    for i in range(8):
        if groups[i] == "0":
            if run == 0:
                at = i
            run += 1
            if run > best_len:
                best_at, best_len = at, run
        else:
            run = 0
    if best_len < 2:
        return ":".join(groups)
    return ":".join(groups[:best_at]) + "::" + ":".join(groups[best_at + best_len :])


def format_addr(ip: bytes, port: int) -> str:
    """`1.2.3.4:41641` or `[2001:db8::1]:41641`, the form Go's netip uses."""
    if len(ip) == 16:
        return "[%s]:%d" % (format_ip(ip), port)
    return "%s:%d" % (format_ip(ip), port)


def parse_ip(text: str) -> bytes:
    """Parses `1.2.3.4` or an IPv6 address (with `::` and a dotted tail) into bytes.

    Raises:
        RemoteProtocolError("bad_ip"): anything else, including zones (`%eth0`).
    """
    if ":" not in text:
        return _parse_ip4(text)
    head, sep, tail = text.partition("::")
    if "::" in tail:
        raise RemoteProtocolError("bad_ip", "two '::' in " + text)
    left = _ip6_groups(head)
    right = _ip6_groups(tail)
    missing = 8 - len(left) - len(right)
    if (sep and missing < 1) or (not sep and missing != 0):
        raise RemoteProtocolError("bad_ip", "wrong number of groups in " + text)
    groups = left + [0] * missing + right
    out = bytearray()
    for g in groups:
        out.append(g >> 8)
        out.append(g & 0xFF)
    return bytes(out)


def parse_addr(text: str) -> "tuple[bytes, int]":
    """Parses `1.2.3.4:41641` or `[2001:db8::1]:41641` (Go's netip.AddrPort text)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise RemoteProtocolError("bad_addr", "IPv6 needs brackets: " + text)
    if not sep or not port.isdigit() or int(port) > 0xFFFF:
        raise RemoteProtocolError("bad_addr", "want ip:port, got " + text)
    return parse_ip(host), int(port)


def _parse_ip4(text: str) -> bytes:
    parts = text.split(".")
    if len(parts) != 4:
        raise RemoteProtocolError("bad_ip", "not an IPv4 address: " + text)
    out = bytearray()
    for p in parts:
        if not p.isdigit() or len(p) > 3 or (len(p) > 1 and p[0] == "0") or int(p) > 255:
            raise RemoteProtocolError("bad_ip", "bad IPv4 octet in " + text)
        out.append(int(p))
    return bytes(out)


def _ip6_groups(text: str) -> "list[int]":
    if not text:
        return []
    groups: "list[int]" = []
    parts = text.split(":")
    for i, p in enumerate(parts):
        if "." in p and i == len(parts) - 1:
            v4 = _parse_ip4(p)
            groups.append((v4[0] << 8) | v4[1])
            groups.append((v4[2] << 8) | v4[3])
            continue
        if not 1 <= len(p) <= 4:
            raise RemoteProtocolError("bad_ip", "bad IPv6 group %r" % p)
        try:
            groups.append(int(p, 16))
        except ValueError:
            raise RemoteProtocolError("bad_ip", "bad IPv6 group %r" % p)
    return groups
