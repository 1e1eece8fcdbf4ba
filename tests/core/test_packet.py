"""IP packet parsing and the UDP packets the DNS intercept writes back."""

import struct

from meshlet import packet
from meshlet.errors import LocalProtocolError, RemoteProtocolError
from meshlet.packet import (
    PROTO_HOPOPT,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_IPV6_FRAGMENT,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_SYN,
    checksum,
    parse,
    udp_packet,
)
from meshlet.wire import parse_ip
from meshlet_testing.ippackets import fragment6, icmp, icmp_packet, ip4, ip6, tcp, tcp_packet, udp
from meshlet_testing.raises import raises
from meshlet_testing.vectors import unhex

PEER = "100.64.0.2"
US = "100.64.0.1"
PEER6 = "fd7a:115c:a1e0::2"
US6 = "fd7a:115c:a1e0::1"


def bad(data):
    return raises(RemoteProtocolError, "bad_packet", parse, data)


# --- the checksum, against published examples ---------------------------------


def test_checksum_of_rfc1071s_numerical_example():
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
    assert checksum(unhex("00 01 f2 03 f4 f5 f6 f7")) == 0x220D


def test_checksum_of_the_classic_ipv4_header_example():
    # The worked IPv4 header from Wikipedia's "IPv4 header checksum": 192.168.0.1 -> 192.168.0.199, UDP.
    header = unhex("45 00 00 73 00 00 40 00 40 11 b8 61 c0 a8 00 01 c0 a8 00 c7")
    assert checksum(header[:10] + b"\x00\x00" + header[12:]) == 0xB861
    assert checksum(header) == 0  # how a receiver verifies it
    pkt = parse(header + udp(1024, 53, bytes(0x73 - 28)))
    assert (pkt.version, pkt.proto, pkt.total_len) == (4, PROTO_UDP, 0x73)
    assert (pkt.src, pkt.dst) == (parse_ip("192.168.0.1"), parse_ip("192.168.0.199"))


def test_checksum_of_an_odd_length_pads_with_zero():
    assert checksum(b"\x01") == checksum(b"\x01\x00") == 0xFEFF


# --- IPv4 -----------------------------------------------------------------------


def test_a_tcp_syn_from_a_peer_to_our_ssh_port():
    pkt = parse(tcp_packet(PEER, 51000, US, 22, TCP_SYN))
    assert (pkt.version, pkt.proto) == (4, PROTO_TCP)
    assert (pkt.src, pkt.src_port) == (parse_ip(PEER), 51000)
    assert (pkt.dst, pkt.dst_port) == (parse_ip(US), 22)
    assert pkt.tcp_flags == TCP_SYN
    assert (pkt.header_len, pkt.payload_offset, pkt.total_len) == (20, 40, 40)
    assert not pkt.fragment
    assert (pkt.icmp_type, pkt.icmp_code) == (-1, -1)


def test_tcp_options_move_the_payload_not_the_ports():
    seg = tcp(443, 51000, TCP_SYN | TCP_ACK, b"hello", options=b"\x02\x04\x05\xb4" + b"\x01" * 4)
    pkt = parse(ip4(PEER, US, PROTO_TCP, seg))
    assert (pkt.src_port, pkt.dst_port, pkt.tcp_flags) == (443, 51000, TCP_SYN | TCP_ACK)
    assert (pkt.payload_offset, pkt.payload_end) == (20 + 28, 20 + 28 + 5)


def test_ipv4_options_are_skipped_by_ihl():
    # IHL 6: a 4-byte option (router alert 94 04 00 00) before the UDP header.
    data = ip4(PEER, US, PROTO_UDP, udp(5353, 53, b"q"), options=b"\x94\x04\x00\x00")
    pkt = parse(data)
    assert data[0] == 0x46
    assert (pkt.header_len, pkt.src_port, pkt.dst_port) == (24, 5353, 53)
    assert (pkt.payload_offset, pkt.payload_end) == (32, 33)


def test_a_dns_query_to_100_100_100_100_shows_where_the_question_is():
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    data = ip4(US, "100.100.100.100", PROTO_UDP, udp(40000, 53, query))
    pkt = parse(data)
    assert (pkt.dst, pkt.dst_port) == (parse_ip("100.100.100.100"), 53)
    assert data[pkt.payload_offset : pkt.payload_end] == query


def test_udp_length_shorter_than_the_ip_payload_ends_the_payload_early():
    body = bytearray(udp(1000, 2000, b"abcdef"))
    struct.pack_into(">H", body, 4, 8 + 2)  # the datagram claims only "ab"; the rest is padding
    pkt = parse(ip4(PEER, US, PROTO_UDP, bytes(body)))
    assert (pkt.payload_offset, pkt.payload_end, pkt.total_len) == (28, 30, 34)


def test_a_ping_has_a_type_and_code_and_no_ports():
    pkt = parse(icmp_packet(PEER, US, packet.ICMP4_ECHO_REQUEST))
    assert (pkt.proto, pkt.icmp_type, pkt.icmp_code) == (PROTO_ICMP, 8, 0)
    assert (pkt.src_port, pkt.dst_port, pkt.payload_offset) == (0, 0, 28)


def test_sctp_ports_are_read():
    pkt = parse(ip4(PEER, US, PROTO_SCTP, struct.pack(">HHII", 3868, 3869, 7, 0)))
    assert (pkt.proto, pkt.src_port, pkt.dst_port, pkt.payload_offset) == (PROTO_SCTP, 3868, 3869, 32)


def test_other_protocols_keep_their_number_and_have_no_ports():
    pkt = parse(ip4(PEER, US, 47, b"\x00\x00\x08\x00gre"))  # GRE
    assert (pkt.proto, pkt.src_port, pkt.dst_port, pkt.payload_offset) == (47, 0, 0, 20)


def test_bytes_past_the_total_length_are_padding():
    data = tcp_packet(PEER, 51000, US, 22, TCP_ACK)
    pkt = parse(data + b"\x00" * 6)
    assert (pkt.total_len, pkt.payload_end) == (40, 40)


def test_a_first_fragment_is_parsed_like_a_whole_packet():
    # More-fragments set, offset 0: the UDP header is here, the length covers the reassembled datagram.
    body = struct.pack(">HHHH", 4000, 53, 3000, 0) + b"x" * 100
    pkt = parse(ip4(PEER, US, PROTO_UDP, body, frag=0x2000))
    assert (pkt.src_port, pkt.dst_port, pkt.fragment) == (4000, 53, False)
    assert pkt.payload_end == pkt.total_len == 128


def test_a_later_fragment_has_no_ports():
    pkt = parse(ip4(PEER, US, PROTO_UDP, b"y" * 64, frag=185))  # offset 1480 bytes, the last piece
    assert pkt.fragment
    assert (pkt.proto, pkt.src_port, pkt.dst_port, pkt.payload_offset) == (PROTO_UDP, 0, 0, 20)


def test_a_fragment_that_could_overwrite_the_transport_header_is_rejected():
    # RFC 1858: offset 1 block (8 bytes) lands inside the TCP header of the first fragment.
    bad(ip4(PEER, US, PROTO_TCP, b"z" * 32, frag=1))
    bad(ip4(PEER, US, PROTO_TCP, b"z" * 32, frag=9))
    assert parse(ip4(PEER, US, PROTO_TCP, b"z" * 32, frag=10)).fragment


def test_a_first_fragment_too_short_for_its_transport_header_is_rejected():
    bad(ip4(PEER, US, PROTO_TCP, tcp(1, 22, TCP_SYN)[:12], frag=0x2000))


# --- IPv6 -----------------------------------------------------------------------


def test_a_tcp_syn_over_ipv6():
    pkt = parse(tcp_packet(PEER6, 51000, US6, 22, TCP_SYN))
    assert (pkt.version, pkt.proto, pkt.header_len, pkt.payload_offset) == (6, PROTO_TCP, 40, 60)
    assert (pkt.src, pkt.dst) == (parse_ip(PEER6), parse_ip(US6))
    assert (pkt.src_port, pkt.dst_port, pkt.tcp_flags) == (51000, 22, TCP_SYN)


def test_an_icmpv6_echo_reply():
    pkt = parse(icmp_packet(PEER6, US6, packet.ICMP6_ECHO_REPLY))
    assert (pkt.proto, pkt.icmp_type, pkt.icmp_code) == (PROTO_ICMPV6, 129, 0)


def test_icmpv4_inside_ipv6_is_just_a_protocol_number():
    pkt = parse(ip6(PEER6, US6, PROTO_ICMP, icmp(0)))
    assert (pkt.proto, pkt.icmp_type) == (PROTO_ICMP, -1)


def test_the_ipv6_fragment_header_is_stepped_over():
    first = parse(
        ip6(PEER6, US6, PROTO_IPV6_FRAGMENT, udp(4000, 53, b"q" * 20), fragment6(PROTO_UDP, 0, True))
    )
    assert (first.proto, first.header_len, first.src_port, first.dst_port) == (PROTO_UDP, 48, 4000, 53)
    assert not first.fragment
    later = parse(ip6(PEER6, US6, PROTO_IPV6_FRAGMENT, b"r" * 40, fragment6(PROTO_UDP, 1232, False)))
    assert later.fragment and (later.proto, later.src_port, later.header_len) == (PROTO_UDP, 0, 48)


def test_other_ipv6_extension_headers_become_the_protocol():
    # Hop-by-hop options first (MLD does this): Tailscale's "unknown" protocol 0; the filter drops it.
    hop_by_hop = bytes((PROTO_UDP, 0, 5, 2, 0, 0, 1, 0))
    pkt = parse(ip6(PEER6, US6, PROTO_HOPOPT, hop_by_hop + udp(1, 2)))
    assert (pkt.proto, pkt.src_port, pkt.header_len) == (PROTO_HOPOPT, 0, 40)


def test_bad_ipv6_fragments_are_rejected():
    bad(ip6(PEER6, US6, PROTO_IPV6_FRAGMENT, b"", fragment6(PROTO_UDP, 0, True)[:6]))
    bad(ip6(PEER6, US6, PROTO_IPV6_FRAGMENT, b"x" * 16, fragment6(PROTO_IPV6_FRAGMENT, 0, True)))
    bad(ip6(PEER6, US6, PROTO_IPV6_FRAGMENT, b"x" * 16, fragment6(PROTO_TCP, 8, True)))


# --- malformed ------------------------------------------------------------------


def test_not_an_ip_packet():
    bad(b"")
    bad(b"\x50" + bytes(39))  # version 5
    bad(b"\x00" * 40)  # version 0


def test_truncated_headers():
    good4 = tcp_packet(PEER, 51000, US, 22, TCP_SYN)
    good6 = tcp_packet(PEER6, 51000, US6, 22, TCP_SYN)
    for cut in (1, 19, 20, 39):
        bad(good4[:cut])  # the header says 40 bytes
    for cut in (1, 39, 40, 59):
        bad(good6[:cut])


def test_lying_ipv4_lengths():
    good = bytearray(tcp_packet(PEER, 51000, US, 22, TCP_SYN))
    ihl4 = bytearray(good)
    ihl4[0] = 0x44  # IHL 4: shorter than the fixed header
    bad(bytes(ihl4))
    ihl15 = bytearray(good)
    ihl15[0] = 0x4F  # 60-byte header in a 40-byte packet
    bad(bytes(ihl15))
    short_total = ip4(PEER, US, PROTO_TCP, tcp(1, 2, TCP_SYN), total_len=16)
    bad(short_total)


def test_transport_headers_cut_short():
    bad(ip4(PEER, US, PROTO_TCP, tcp(1, 22, TCP_SYN)[:19]))
    bad(ip4(PEER, US, PROTO_UDP, udp(1, 53)[:7]))
    bad(ip4(PEER, US, PROTO_ICMP, icmp(8)[:7]))
    bad(ip4(PEER, US, PROTO_SCTP, bytes(11)))
    bad(ip6(PEER6, US6, PROTO_ICMPV6, icmp(128)[:4]))


def test_lying_transport_lengths():
    doff4 = bytearray(tcp(1, 22, TCP_SYN))
    doff4[12] = 0x40  # data offset 16 bytes
    bad(ip4(PEER, US, PROTO_TCP, bytes(doff4)))
    doff15 = bytearray(tcp(1, 22, TCP_SYN))
    doff15[12] = 0xF0  # 60 bytes of TCP header in a 20-byte segment
    bad(ip4(PEER, US, PROTO_TCP, bytes(doff15)))
    for claimed in (7, 9 + 1):
        body = bytearray(udp(1, 53, b"x"))
        struct.pack_into(">H", body, 4, claimed)
        bad(ip4(PEER, US, PROTO_UDP, bytes(body)))


# --- building UDP packets ---------------------------------------------------------


def _pseudo_sum(src, dst, udp_len):
    """The pseudo-header's words, summed (RFC 768; RFC 8200 §8.1)."""
    return (
        sum(struct.unpack(">%dH" % (len(src) // 2), src))
        + sum(struct.unpack(">%dH" % (len(dst) // 2), dst))
        + 17
        + udp_len
    )


def test_a_dns_answer_from_100_100_100_100_back_to_us():
    answer = b"\x12\x34\x81\x80" + bytes(8)
    src, dst = parse_ip("100.100.100.100"), parse_ip(US)
    data = udp_packet(src, dst, 53, 40000, answer)
    assert data[:12] == unhex("45 00 00 28 00 00 00 00 40 11") + data[10:12]
    assert checksum(data[:20]) == 0
    pkt = parse(data)
    assert (pkt.src, pkt.src_port, pkt.dst, pkt.dst_port) == (src, 53, dst, 40000)
    assert data[pkt.payload_offset : pkt.payload_end] == answer
    assert checksum(data[20:], _pseudo_sum(src, dst, 8 + len(answer))) == 0


def test_an_ipv6_dns_answer():
    src, dst = parse_ip("fd7a:115c:a1e0::53"), parse_ip(US6)
    data = udp_packet(src, dst, 53, 40000, b"answer")
    assert data[:8] == unhex("60 00 00 00 00 0e 11 40")
    pkt = parse(data)
    assert (pkt.version, pkt.proto, pkt.total_len, pkt.payload_offset) == (6, PROTO_UDP, 54, 48)
    assert checksum(data[40:], _pseudo_sum(src, dst, 14)) == 0


def test_a_checksum_that_sums_to_zero_is_sent_as_ffff():
    # RFC 768: a computed zero is transmitted as all ones (zero means "none"; IPv6 forbids it).
    src, dst = parse_ip("10.0.0.1"), parse_ip("10.0.0.2")
    partial = _pseudo_sum(src, dst, 10) + 1 + 2 + 10
    filler = (0xFFFF - (partial % 0xFFFF)) % 0xFFFF  # makes the total sum 0xffff, so the checksum is 0
    data = udp_packet(src, dst, 1, 2, struct.pack(">H", filler))
    assert data[26:28] == b"\xff\xff"
    assert checksum(data[20:], _pseudo_sum(src, dst, 10)) == 0


def test_udp_packet_refuses_what_it_cannot_build():
    v4, v6 = parse_ip(US), parse_ip(US6)
    raises(LocalProtocolError, "bad_ip", udp_packet, v4, v6, 1, 2, b"")
    raises(LocalProtocolError, "bad_ip", udp_packet, b"\x01\x02", b"\x01\x02", 1, 2, b"")
    raises(LocalProtocolError, "out_of_range", udp_packet, v4, v4, 65536, 2, b"")
    raises(LocalProtocolError, "out_of_range", udp_packet, v4, v4, 1, -1, b"")
    raises(LocalProtocolError, "too_large", udp_packet, v4, v4, 1, 2, bytes(65535 - 28 + 1))
    assert len(udp_packet(v4, v4, 1, 2, bytes(65535 - 28))) == 65535
