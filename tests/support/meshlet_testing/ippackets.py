"""Hand-built IP packets for the packet and filter tests, written the way a protocol example reads.

    tcp_packet("100.64.0.2", 51000, "100.64.0.1", 22, SYN)    # a TCP SYN to our SSH port
    icmp_packet("100.64.0.2", "100.64.0.1", 8)                # a ping
    ip4("100.64.0.2", "100.64.0.1", 47, b"...")               # any protocol, any fragment offset

Addresses are text; a ':' picks IPv6. The IPv4 header checksum is filled in
(with meshlet.packet.checksum); transport checksums are left zero, since
nothing here reads them. Runs under MicroPython too (tests/core uses it).
"""

import struct

from meshlet.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, checksum
from meshlet.wire import parse_ip


def ip4(src, dst, proto, body, frag=0, options=b"", total_len=-1):  # type: ignore[no-untyped-def]
    """An IPv4 packet. `frag` is the flags/offset word (0x2000 more fragments, offset in 8-byte blocks)."""
    ihl = 5 + len(options) // 4
    total = 4 * ihl + len(body) if total_len < 0 else total_len
    head = bytearray(struct.pack(">BBHHHBBH", 0x40 | ihl, 0, total, 0x1234, frag, 64, proto, 0))
    head.extend(parse_ip(src))
    head.extend(parse_ip(dst))
    head.extend(options)
    struct.pack_into(">H", head, 10, checksum(head))
    return bytes(head) + body


def ip6(src, dst, next_header, body, ext=b""):  # type: ignore[no-untyped-def]
    """An IPv6 packet; `ext` is extension headers placed before `body` (their chain is the caller's)."""
    head = struct.pack(">IHBB", 0x60000000, len(ext) + len(body), next_header, 64)
    return head + parse_ip(src) + parse_ip(dst) + ext + body


def ip(src, dst, proto, body):  # type: ignore[no-untyped-def]
    """IPv4 or IPv6, whichever the addresses are."""
    if ":" in src:
        return ip6(src, dst, proto, body)
    return ip4(src, dst, proto, body)


def fragment6(next_header, offset_bytes, more):  # type: ignore[no-untyped-def]
    """An IPv6 Fragment extension header (RFC 8200 §4.5)."""
    return struct.pack(">BBHI", next_header, 0, offset_bytes | (1 if more else 0), 0xCAFE)


def tcp(sport, dport, flags, payload=b"", options=b""):  # type: ignore[no-untyped-def]
    """A TCP segment: seq 1000, ack 0 (or 1 when ACK is set), window 65535."""
    data_offset = (5 + len(options) // 4) << 4
    ack = 1 if flags & 0x10 else 0
    return (
        struct.pack(">HHIIBBHHH", sport, dport, 1000, ack, data_offset, flags, 65535, 0, 0)
        + options
        + payload
    )


def udp(sport, dport, payload=b""):  # type: ignore[no-untyped-def]
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(icmp_type, code=0, rest=b"\x00\x01\x00\x01"):  # type: ignore[no-untyped-def]
    """An ICMP(v6) message: type, code, checksum (zero), then 4 bytes (an echo's id and sequence)."""
    return struct.pack(">BBH", icmp_type, code, 0) + rest


def tcp_packet(src, sport, dst, dport, flags):  # type: ignore[no-untyped-def]
    return ip(src, dst, PROTO_TCP, tcp(sport, dport, flags))


def udp_packet(src, sport, dst, dport, payload=b""):  # type: ignore[no-untyped-def]
    return ip(src, dst, PROTO_UDP, udp(sport, dport, payload))


def icmp_packet(src, dst, icmp_type, code=0):  # type: ignore[no-untyped-def]
    proto = PROTO_ICMPV6 if ":" in src else PROTO_ICMP
    return ip(src, dst, proto, icmp(icmp_type, code))
