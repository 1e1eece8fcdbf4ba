"""Properties of the IP packet parser and builder.

Garbage and mutated packets raise RemoteProtocolError or parse into a packet
whose offsets stay inside it; udp_packet round-trips through parse; its
checksums verify under an independent ones'-complement sum.
"""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet import packet
from meshlet.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_IPV6_FRAGMENT, PROTO_SCTP, PROTO_TCP, PROTO_UDP
from meshlet_testing.garbage import mutations, parses_or_rejects

ip4s = st.binary(min_size=4, max_size=4)
ip6s = st.binary(min_size=16, max_size=16)
addr_pairs = st.one_of(st.tuples(ip4s, ip4s), st.tuples(ip6s, ip6s))
port_numbers = st.integers(min_value=0, max_value=0xFFFF)
payloads = st.binary(max_size=1500)
# No per-example deadline: a loaded machine must not turn into a failure (no wall-clock ceilings).
no_deadline = settings(deadline=None)
protos = st.sampled_from([PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, 0, 47, 99, 255])


def ones_complement_checksum(data: bytes) -> int:
    """RFC 1071 by another road: 2^16 = 1 (mod 0xffff), so the folded sum is the value mod 0xffff."""
    if len(data) % 2:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    folded = value % 0xFFFF
    if folded == 0 and value != 0:
        folded = 0xFFFF
    return ~folded & 0xFFFF


def check_invariants(data: bytes, pkt: packet.Packet) -> None:
    assert pkt.version in (4, 6)
    assert len(pkt.src) == len(pkt.dst) == (4 if pkt.version == 4 else 16)
    assert 0 <= pkt.header_len <= pkt.payload_offset <= pkt.payload_end <= pkt.total_len <= len(data)
    assert 0 <= pkt.src_port <= 0xFFFF and 0 <= pkt.dst_port <= 0xFFFF
    if pkt.fragment:
        assert pkt.src_port == pkt.dst_port == 0


def parse_checked(data: bytes) -> None:
    pkt = parses_or_rejects(packet.parse, data)
    if pkt is not None:
        check_invariants(data, pkt)


@no_deadline
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_reject(data: bytes) -> None:
    parse_checked(data)


@no_deadline
@given(
    st.sampled_from([0x45, 0x46, 0x4F, 0x44, 0x40]),
    st.integers(min_value=0, max_value=0xFFFF),
    st.integers(min_value=0, max_value=0xFFFF),
    protos,
    st.binary(max_size=120),
)
def test_ipv4_headers_with_any_lengths_and_fragment_words(
    ver_ihl: int, total: int, frag: int, proto: int, body: bytes
) -> None:
    head = struct.pack(">BBHHHBBH", ver_ihl, 0, total, 0, frag, 64, proto, 0) + bytes(8)
    parse_checked(head + body)
    parse_checked(head[:2] + struct.pack(">H", len(head) + len(body)) + head[4:] + body)


@no_deadline
@given(
    st.integers(min_value=0, max_value=0xFFFF),
    st.sampled_from([PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_IPV6_FRAGMENT, 0, 43, 60]),
    st.binary(max_size=120),
)
def test_ipv6_headers_with_any_lengths(payload_len: int, next_header: int, body: bytes) -> None:
    head = struct.pack(">IHBB", 0x60000000, payload_len, next_header, 64) + bytes(32)
    parse_checked(head + body)
    parse_checked(head[:4] + struct.pack(">H", len(body)) + head[6:] + body)


@no_deadline
@given(
    addr_pairs,
    port_numbers,
    port_numbers,
    st.binary(max_size=64),
    st.integers(min_value=0),
    st.integers(0, 255),
)
def test_mutated_packets_parse_or_reject(
    addrs: "tuple[bytes, bytes]", sport: int, dport: int, payload: bytes, pos: int, value: int
) -> None:
    src, dst = addrs
    good = packet.udp_packet(src, dst, sport, dport, payload)
    parse_checked(mutations(good, pos, value))
    for proto in (PROTO_TCP, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP):
        other = bytearray(good)
        other[9 if len(src) == 4 else 6] = proto
        parse_checked(mutations(bytes(other), pos, value))


@no_deadline
@given(addr_pairs, port_numbers, port_numbers, payloads)
def test_udp_packet_round_trips_through_parse(
    addrs: "tuple[bytes, bytes]", sport: int, dport: int, payload: bytes
) -> None:
    src, dst = addrs
    data = packet.udp_packet(src, dst, sport, dport, payload)
    pkt = packet.parse(data)
    check_invariants(data, pkt)
    assert (pkt.version, pkt.proto) == (4 if len(src) == 4 else 6, PROTO_UDP)
    assert (pkt.src, pkt.dst, pkt.src_port, pkt.dst_port) == (src, dst, sport, dport)
    assert pkt.total_len == len(data)
    assert data[pkt.payload_offset : pkt.payload_end] == payload


@no_deadline
@given(addr_pairs, port_numbers, port_numbers, payloads)
def test_udp_packet_checksums_verify(
    addrs: "tuple[bytes, bytes]", sport: int, dport: int, payload: bytes
) -> None:
    src, dst = addrs
    data = packet.udp_packet(src, dst, sport, dport, payload)
    header_len = 20 if len(src) == 4 else 40
    if header_len == 20:
        assert ones_complement_checksum(data[:20]) == 0
    udp = data[header_len:]
    pseudo = src + dst + struct.pack(">xBH", PROTO_UDP, len(udp)) if len(src) == 4 else src + dst
    if len(src) == 16:
        pseudo += struct.pack(">I3xB", len(udp), PROTO_UDP)
    assert udp[6:8] != b"\x00\x00"  # zero would mean "no checksum"
    assert ones_complement_checksum(pseudo + udp) == 0


@no_deadline
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=0x1FFFF))
def test_checksum_agrees_with_the_independent_one(data: bytes, partial: int) -> None:
    assert packet.checksum(data) == ones_complement_checksum(data)
    # A partial sum is the same as two more words in front: (partial >> 16) and (partial & 0xffff).
    assert packet.checksum(data, partial) == ones_complement_checksum(struct.pack(">I", partial) + data)
