"""IPv4 and IPv6 packets: the headers the packet filter and the DNS intercept read.

Every packet a peer sends us comes out of WireGuard as one IP packet; the
filter (filter.py) needs its addresses, protocol, ports and TCP flags, and the
DNS intercept needs the UDP payload of queries to 100.100.100.100. `parse`
reads exactly that and no more, once per packet, so it reads fixed offsets
with `struct` and builds one `Packet`.

IPv4 header (RFC 791), big-endian:

    1b  version 4 | IHL (header length in 4-byte words, 5..15)
    1b  DSCP/ECN
    2b  total length (header + payload)
    2b  identification
    2b  flags (0x2000 more fragments) | fragment offset in 8-byte blocks
    1b  TTL
    1b  protocol
    2b  header checksum
    4b  source, 4b destination, then IHL*4 - 20 bytes of options

IPv6 header (RFC 8200), 40 bytes:

    4b  version 6 | traffic class | flow label
    2b  payload length (everything after these 40 bytes)
    1b  next header
    1b  hop limit
    16b source, 16b destination

Transport headers read: TCP (ports, data offset, flags), UDP (ports, length),
SCTP (ports), ICMPv4/ICMPv6 (type, code; every ICMP message has an 8-byte
header). Anything else keeps its protocol number and no ports.

Decisions, all Tailscale's (net/packet `Parsed.decode4`/`decode6`), so a peer
sees the same filter here as on a tailscaled node:

* IPv6 extension headers: only a Fragment header (44) directly after the
  base header is stepped over. Any other extension header (hop-by-hop 0,
  routing 43, destination options 60, ...) becomes the packet's `proto`; the
  filter drops protocol 0 outright and treats the others as unknown
  protocols, which no default rule admits.
* Fragments: a first fragment is parsed like a whole packet (its transport
  header must be complete: RFC 1858's tiny-fragment attack hides the ports in
  the second fragment). A later fragment has no transport header, so it has
  ports 0 and `fragment = True`; the filter lets it through when it is
  addressed to us, because without its first fragment (which the filter did
  judge) the receiver's kernel can never reassemble it. A later fragment whose
  offset is under 80 bytes could overwrite the first one's transport header
  and is rejected.
* Lengths: the header's total length must fit in the bytes given; bytes after
  it are ignored (link padding). Checksums are not verified: the packet came
  through an authenticated tunnel and the kernel checks them on delivery.

Errors: anything malformed raises `RemoteProtocolError("bad_packet", detail)`
and nothing else (tests/props holds `parse` to that).

`udp_packet` builds the other direction: a UDP datagram in an IPv4 or IPv6
packet with both checksums, which the agent writes into the TUN to answer DNS
queries sent to 100.100.100.100. Like Tailscale's marshallers it sets TTL (hop
limit) 64, identification 0 and no flags.
"""

import struct

from ._compat import const
from .errors import LocalProtocolError, RemoteProtocolError

# --- specification constants --------------------------------------------------

PROTO_HOPOPT = 0  # IPv6 hop-by-hop options; Tailscale's "unknown"
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6_FRAGMENT = 44
PROTO_ICMPV6 = 58
PROTO_TSMP = 99  # Tailscale Message Protocol, Tailscale's own in-tunnel messages
PROTO_SCTP = 132

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

ICMP4_ECHO_REPLY = 0
ICMP4_UNREACHABLE = 3
ICMP4_ECHO_REQUEST = 8
ICMP4_TIME_EXCEEDED = 11
ICMP4_PARAM_PROBLEM = 12

ICMP6_UNREACHABLE = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_PARAM_PROBLEM = 4
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129

_IP4_HEADER_LEN = const(20)
_IP6_HEADER_LEN = const(40)
_FRAG_HEADER_LEN = const(8)
_TCP_HEADER_LEN = const(20)
_UDP_HEADER_LEN = const(8)
_SCTP_HEADER_LEN = const(12)
_ICMP_HEADER_LEN = const(8)
_IP4_MORE_FRAGMENTS = const(0x2000)
_IP4_FRAG_OFFSET = const(0x1FFF)

# --- implementation constants -------------------------------------------------

# A later fragment must start beyond the largest IPv4 header plus a basic TCP
# header ((60 + 20) / 8 blocks), or it could rewrite the ports the filter saw
# in the first fragment (RFC 1858; Tailscale's minFragBlks).
_MIN_FRAG_BLOCKS = const(10)
_TTL = const(64)


class Packet:
    """One parsed IP packet. Addresses are bytes (4 or 16); absent fields are 0 or -1.

    Attributes:
        version: 4 or 6.
        proto: the transport protocol (PROTO_*); for IPv6, the next header
            after an optional Fragment header.
        src, dst: the addresses.
        src_port, dst_port: TCP, UDP and SCTP ports; 0 for other protocols
            and for later fragments.
        tcp_flags: TCP's flag byte (TCP_* bits); 0 otherwise.
        icmp_type, icmp_code: for ICMPv4 in IPv4 and ICMPv6 in IPv6; -1
            otherwise (0 would read as an echo reply).
        header_len: where the transport header starts (IP header, options,
            IPv6 Fragment header).
        payload_offset: where the transport payload starts (after the TCP,
            UDP, SCTP or 8-byte ICMP header); header_len for other protocols.
        payload_end: where the transport payload ends: header_len + the UDP
            length for whole UDP datagrams, else total_len.
        total_len: the packet's length according to its IP header.
        fragment: True for a fragment other than the first (no transport header).
    """

    __slots__ = (
        "version",
        "proto",
        "src",
        "dst",
        "src_port",
        "dst_port",
        "tcp_flags",
        "icmp_type",
        "icmp_code",
        "header_len",
        "payload_offset",
        "payload_end",
        "total_len",
        "fragment",
    )

    def __init__(
        self,
        version: int,
        proto: int,
        src: bytes,
        dst: bytes,
        src_port: int = 0,
        dst_port: int = 0,
        tcp_flags: int = 0,
        icmp_type: int = -1,
        icmp_code: int = -1,
        header_len: int = 0,
        payload_offset: int = 0,
        payload_end: int = 0,
        total_len: int = 0,
        fragment: bool = False,
    ) -> None:
        self.version = version
        self.proto = proto
        self.src = src
        self.dst = dst
        self.src_port = src_port
        self.dst_port = dst_port
        self.tcp_flags = tcp_flags
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.header_len = header_len
        self.payload_offset = payload_offset
        self.payload_end = payload_end
        self.total_len = total_len
        self.fragment = fragment

    def __repr__(self) -> str:
        return "Packet(v%d proto %d %s:%d -> %s:%d flags 0x%02x len %d%s)" % (
            self.version,
            self.proto,
            self.src.hex(),
            self.src_port,
            self.dst.hex(),
            self.dst_port,
            self.tcp_flags,
            self.total_len,
            " fragment" if self.fragment else "",
        )


def parse(data: "bytes | bytearray") -> Packet:
    """Parses the IP and transport headers of one packet.

    Raises:
        RemoteProtocolError("bad_packet"): not IPv4/IPv6, truncated, a
            transport header cut short, or a fragment that overlaps one.
    """
    n = len(data)
    if n == 0:
        raise RemoteProtocolError("bad_packet", "empty")
    version = data[0] >> 4
    if version == 4:
        return _parse4(data, n)
    if version == 6:
        return _parse6(data, n)
    raise RemoteProtocolError("bad_packet", "IP version %d" % version)


def _parse4(data: "bytes | bytearray", n: int) -> Packet:
    if n < _IP4_HEADER_LEN:
        raise RemoteProtocolError("bad_packet", "%d bytes is no IPv4 header" % n)
    header_len = (data[0] & 0x0F) << 2
    total, frag, proto = struct.unpack_from(">HxxHxB", data, 2)
    if header_len < _IP4_HEADER_LEN or total < header_len:
        raise RemoteProtocolError("bad_packet", "IHL %d, total length %d" % (header_len, total))
    if total > n:
        raise RemoteProtocolError("bad_packet", "total length %d, have %d bytes" % (total, n))
    src = bytes(data[12:16])
    dst = bytes(data[16:20])
    offset = frag & _IP4_FRAG_OFFSET
    if offset:
        return _later_fragment(4, proto, src, dst, offset, header_len, total)
    return _transport(4, proto, src, dst, data, header_len, total, frag & _IP4_MORE_FRAGMENTS)


def _parse6(data: "bytes | bytearray", n: int) -> Packet:
    if n < _IP6_HEADER_LEN:
        raise RemoteProtocolError("bad_packet", "%d bytes is no IPv6 header" % n)
    payload_len, proto = struct.unpack_from(">HB", data, 4)
    total = _IP6_HEADER_LEN + payload_len
    if total > n:
        raise RemoteProtocolError("bad_packet", "total length %d, have %d bytes" % (total, n))
    src = bytes(data[8:24])
    dst = bytes(data[24:40])
    header_len = _IP6_HEADER_LEN
    more = 0
    if proto == PROTO_IPV6_FRAGMENT:
        header_len += _FRAG_HEADER_LEN
        if total < header_len:
            raise RemoteProtocolError("bad_packet", "Fragment header cut short")
        proto = data[40]
        offset_flags = struct.unpack_from(">H", data, 42)[0]
        if proto == PROTO_IPV6_FRAGMENT:
            raise RemoteProtocolError("bad_packet", "two Fragment headers")
        offset = offset_flags >> 3
        if offset:
            return _later_fragment(6, proto, src, dst, offset, header_len, total)
        more = offset_flags & 1
    return _transport(6, proto, src, dst, data, header_len, total, more)


def _later_fragment(
    version: int, proto: int, src: bytes, dst: bytes, offset: int, header_len: int, total: int
) -> Packet:
    if offset < _MIN_FRAG_BLOCKS:
        raise RemoteProtocolError(
            "bad_packet", "fragment at offset %d overlaps a transport header" % (offset * 8)
        )
    return Packet(version, proto, src, dst, 0, 0, 0, -1, -1, header_len, header_len, total, total, True)


def _transport(
    version: int,
    proto: int,
    src: bytes,
    dst: bytes,
    data: "bytes | bytearray",
    header_len: int,
    total: int,
    more: int,
) -> Packet:
    room = total - header_len
    if proto == PROTO_TCP:
        if room < _TCP_HEADER_LEN:
            raise RemoteProtocolError("bad_packet", "TCP header cut short")
        sport, dport, data_offset, flags = struct.unpack_from(">HH8xBB", data, header_len)
        tcp_len = (data_offset >> 4) << 2
        if tcp_len < _TCP_HEADER_LEN:
            raise RemoteProtocolError("bad_packet", "TCP data offset %d" % tcp_len)
        payload_offset = header_len + tcp_len
        if payload_offset > total:
            if not more:
                raise RemoteProtocolError("bad_packet", "TCP options cut short")
            payload_offset = total
        return Packet(
            version, proto, src, dst, sport, dport, flags, -1, -1, header_len, payload_offset, total, total
        )
    if proto == PROTO_UDP:
        if room < _UDP_HEADER_LEN:
            raise RemoteProtocolError("bad_packet", "UDP header cut short")
        sport, dport, udp_len = struct.unpack_from(">HHH", data, header_len)
        end = total
        if not more:  # a first fragment's length covers the whole datagram
            if udp_len < _UDP_HEADER_LEN or udp_len > room:
                raise RemoteProtocolError("bad_packet", "UDP length %d in %d bytes" % (udp_len, room))
            end = header_len + udp_len
        return Packet(
            version, proto, src, dst, sport, dport, 0, -1, -1, header_len, header_len + 8, end, total
        )
    if (proto == PROTO_ICMP and version == 4) or (proto == PROTO_ICMPV6 and version == 6):
        if room < _ICMP_HEADER_LEN:
            raise RemoteProtocolError("bad_packet", "ICMP header cut short")
        icmp_type = data[header_len]
        icmp_code = data[header_len + 1]
        return Packet(
            version, proto, src, dst, 0, 0, 0, icmp_type, icmp_code, header_len, header_len + 8, total, total
        )
    if proto == PROTO_SCTP:
        if room < _SCTP_HEADER_LEN:
            raise RemoteProtocolError("bad_packet", "SCTP header cut short")
        sport, dport = struct.unpack_from(">HH", data, header_len)
        return Packet(
            version, proto, src, dst, sport, dport, 0, -1, -1, header_len, header_len + 12, total, total
        )
    return Packet(version, proto, src, dst, 0, 0, 0, -1, -1, header_len, header_len, total, total)


# --- building -----------------------------------------------------------------


def udp_packet(src: bytes, dst: bytes, sport: int, dport: int, payload: "bytes | bytearray") -> bytes:
    """A UDP datagram in an IPv4 (4-byte addresses) or IPv6 (16-byte) packet, checksums filled in.

    Raises:
        LocalProtocolError("bad_ip"): addresses not both 4 or both 16 bytes.
        LocalProtocolError("out_of_range"): a port outside 0..65535.
        LocalProtocolError("too_large"): the packet would exceed its length field.
    """
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise LocalProtocolError("bad_ip", "addresses of %d and %d bytes" % (len(src), len(dst)))
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise LocalProtocolError("out_of_range", "ports %d, %d" % (sport, dport))
    udp_len = _UDP_HEADER_LEN + len(payload)
    ip_len = _IP4_HEADER_LEN if len(src) == 4 else _IP6_HEADER_LEN
    if udp_len > 0xFFFF or (ip_len == _IP4_HEADER_LEN and udp_len + ip_len > 0xFFFF):
        raise LocalProtocolError("too_large", "%d payload bytes" % len(payload))
    # RFC 768 / RFC 8200 §8.1: the checksum covers a pseudo-header of both
    # addresses, the protocol and the UDP length, then the header and data.
    pseudo = _sum16(src) + _sum16(dst) + PROTO_UDP + udp_len
    udp = struct.pack(">HHHH", sport, dport, udp_len, 0)
    csum = checksum(payload, pseudo + _sum16(udp))
    if csum == 0:
        csum = 0xFFFF  # zero means "no checksum" (IPv4) or is forbidden (IPv6)
    udp = struct.pack(">HHHH", sport, dport, udp_len, csum)
    if ip_len == _IP4_HEADER_LEN:
        head = bytearray(struct.pack(">BBHHHBBH", 0x45, 0, ip_len + udp_len, 0, 0, _TTL, PROTO_UDP, 0))
        head.extend(src)
        head.extend(dst)
        struct.pack_into(">H", head, 10, checksum(head))
    else:
        head = bytearray(struct.pack(">IHBB", 0x60000000, udp_len, PROTO_UDP, _TTL))
        head.extend(src)
        head.extend(dst)
    head.extend(udp)
    head.extend(payload)
    return bytes(head)


_SUM_SLICE = 1024  # bytes summed per struct call


def checksum(data: "bytes | bytearray", partial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of `data`, plus an unfolded `partial` sum.

    A buffer that already carries its checksum sums to 0 here: that is how a
    receiver verifies one.
    """
    s = partial + _sum16(data)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _sum16(data: "bytes | bytearray") -> int:
    """The plain sum of `data`'s big-endian 16-bit words, an odd last byte padded with zero."""
    n = len(data)
    s = 0
    if n & 1:
        n -= 1
        s = data[n] << 8
    # In slices, so a 64 KiB datagram never needs a 32k-item tuple (MicroPython's heap is small).
    start = 0
    while start < n:
        words = min(n - start, _SUM_SLICE) >> 1
        s += sum(struct.unpack_from(">%dH" % words, data, start))
        start += words << 1
    return s
