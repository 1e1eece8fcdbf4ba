"""Tailscale's inbound packet filter, rule shapes from meshlet-control and from Tailscale's control.

Our node is 100.64.0.1 / fd7a:115c:a1e0::1; the peer is 100.64.0.2 / fd7a:115c:a1e0::2.
"""

from meshlet.errors import RemoteProtocolError
from meshlet.filter import ALLOW_ALL_RULES, Filter
from meshlet.packet import (
    ICMP4_ECHO_REPLY,
    ICMP4_ECHO_REQUEST,
    ICMP4_TIME_EXCEEDED,
    ICMP4_UNREACHABLE,
    ICMP6_ECHO_REPLY,
    ICMP6_ECHO_REQUEST,
    ICMP6_PACKET_TOO_BIG,
    PROTO_HOPOPT,
    PROTO_IPV6_FRAGMENT,
    PROTO_TCP,
    PROTO_TSMP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    parse,
)
from meshlet_testing.ippackets import fragment6, icmp_packet, ip, ip4, ip6, tcp_packet, udp, udp_packet
from meshlet_testing.raises import raises

US, US6 = "100.64.0.1", "fd7a:115c:a1e0::1"
PEER, PEER6 = "100.64.0.2", "fd7a:115c:a1e0::2"
STRANGER, STRANGER6 = "100.64.0.3", "fd7a:115c:a1e0::3"
MINE = ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]  # the self node's Addresses, as the netmap has them


def ports(ip_text, first, last):
    return {"IP": ip_text, "Ports": {"First": first, "Last": last}}


# What meshlet-control's policy.filter_for sends for `{"src": ["alice@"], "dst": ["pi:22"]}`:
# the peer's addresses as sources, our own addresses as destinations, no IPProto.
SSH_FROM_PEER = [{"SrcIPs": [PEER, PEER6], "DstPorts": [ports(US, 22, 22), ports(US6, 22, 22)]}]


def syn(src, dst, dport, sport=51000):
    return parse(tcp_packet(src, sport, dst, dport, TCP_SYN))


def verdict(f, data, now_ms=0):
    return f.check_inbound(parse(data), now_ms)


# --- TCP ------------------------------------------------------------------------


def test_a_syn_to_an_allowed_port_is_accepted():
    f = Filter(SSH_FROM_PEER, MINE)
    assert f.check_inbound(syn(PEER, US, 22), 0) is None
    assert f.check_inbound(syn(PEER6, US6, 22), 0) is None
    assert f.stats.accepted == {"rule": 2}


def test_a_syn_to_another_port_or_from_another_node_is_dropped():
    f = Filter(SSH_FROM_PEER, MINE)
    assert f.check_inbound(syn(PEER, US, 80), 0) == "no_rule"
    assert f.check_inbound(syn(STRANGER, US, 22), 0) == "no_rule"
    assert f.check_inbound(syn(STRANGER6, US6, 22), 0) == "no_rule"
    assert f.stats.dropped == {"no_rule": 3}


def test_tcp_that_is_not_a_bare_syn_belongs_to_a_connection_and_passes():
    # How our own outgoing connections work: the answers are SYN-ACK, ACK, FIN, RST, never a bare SYN.
    f = Filter([], MINE)
    for flags in (TCP_SYN | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST, 0):
        assert verdict(f, tcp_packet(STRANGER, 443, US, 51000, flags)) is None, flags
    assert verdict(f, tcp_packet(STRANGER, 443, US, 51000, TCP_SYN | TCP_FIN)) == "no_rule"
    assert f.stats.accepted == {"established": 5}


def test_port_ranges_are_inclusive():
    f = Filter([{"SrcIPs": ["*"], "DstPorts": [ports(US, 8000, 8099)]}], MINE)
    assert [f.check_inbound(syn(PEER, US, p), 0) for p in (7999, 8000, 8099, 8100)] == [
        "no_rule",
        None,
        None,
        "no_rule",
    ]


# --- the destination must be ours -------------------------------------------------


def test_packets_to_an_address_that_is_not_ours_are_dropped_even_if_allowed():
    f = Filter.allow_all(MINE)
    assert f.check_inbound(syn(PEER, "100.64.0.9", 22), 0) == "not_local"
    assert f.check_inbound(syn(PEER, "192.168.1.10", 22), 0) == "not_local"
    assert verdict(f, tcp_packet(PEER, 443, "10.0.0.1", 5000, TCP_ACK)) == "not_local"
    assert f.check_inbound(syn(PEER6, "fd7a:115c:a1e0::9", 22), 0) == "not_local"


def test_local_addresses_may_be_bytes_prefixes_or_ranges():
    rules = [{"SrcIPs": ["*"], "DstPorts": [ports("*", 0, 65535)]}]
    f = Filter(rules, [b"\x64\x40\x00\x01", "10.1.0.0/16", "192.168.1.10-192.168.1.20"])
    assert f.check_inbound(syn(PEER, US, 22), 0) is None
    assert f.check_inbound(syn(PEER, "10.1.200.3", 22), 0) is None
    assert f.check_inbound(syn(PEER, "10.2.0.1", 22), 0) == "not_local"
    assert f.check_inbound(syn(PEER, "192.168.1.15", 22), 0) is None
    assert f.check_inbound(syn(PEER, "192.168.1.21", 22), 0) == "not_local"
    f.set_local_ips([US])
    assert f.check_inbound(syn(PEER, "10.1.200.3", 22), 0) == "not_local"


def test_multicast_and_link_local_destinations_are_dropped():
    f = Filter.allow_all()
    assert verdict(f, udp_packet(PEER, 5353, "224.0.0.251", 5353)) == "multicast"
    assert verdict(f, udp_packet(PEER6, 5353, "ff02::fb", 5353)) == "multicast"
    assert verdict(f, udp_packet(PEER, 1, "169.254.1.1", 2)) == "link_local"
    assert verdict(f, udp_packet(PEER6, 1, "fe80::1", 2)) == "link_local"
    # 169.254.169.254 (cloud metadata, GCP's DNS) is the one link-local address Tailscale lets through.
    assert verdict(f, udp_packet(PEER, 1, "169.254.169.254", 53)) is None


# --- UDP and flows ----------------------------------------------------------------


def test_a_udp_answer_to_a_flow_we_opened_passes_without_a_rule():
    f = Filter([], MINE)
    question = parse(udp_packet(US, 40000, PEER, 53, b"query"))
    answer = udp_packet(PEER, 53, US, 40000, b"answer")
    assert verdict(f, answer, 1_000) == "no_rule"
    f.note_outbound(question, 1_000)
    assert verdict(f, answer, 2_000) is None
    assert f.stats.accepted == {"flow": 1}
    # Only that exact flow: another port of ours, another port of theirs, another source.
    assert verdict(f, udp_packet(PEER, 53, US, 40001), 2_000) == "no_rule"
    assert verdict(f, udp_packet(PEER, 54, US, 40000), 2_000) == "no_rule"
    assert verdict(f, udp_packet(STRANGER, 53, US, 40000), 2_000) == "no_rule"


def test_udp_flows_work_over_ipv6_too():
    f = Filter([], MINE)
    f.note_outbound(parse(udp_packet(US6, 40000, PEER6, 53)), 0)
    assert verdict(f, udp_packet(PEER6, 53, US6, 40000), 10) is None


def test_a_udp_flow_expires_after_two_idle_minutes():
    f = Filter([], MINE, flow_timeout_ms=120_000)
    f.note_outbound(parse(udp_packet(US, 40000, PEER, 53)), 0)
    answer = udp_packet(PEER, 53, US, 40000)
    assert verdict(f, answer, 100_000) is None  # use keeps it alive until 220 s
    assert verdict(f, answer, 220_000) is None
    assert verdict(f, answer, 340_001) == "no_rule"
    assert f.flow_count() == 0


def test_the_flow_table_is_bounded():
    f = Filter([], MINE, flow_max=8)
    for i in range(20):
        f.note_outbound(parse(udp_packet(US, 40000 + i, PEER, 53)), i)
        assert f.flow_count() <= 8
    # The newest flows survive; the oldest went first.
    assert verdict(f, udp_packet(PEER, 53, US, 40019), 20) is None
    assert verdict(f, udp_packet(PEER, 53, US, 40000), 20) == "no_rule"


def test_tcp_and_icmp_are_not_flows():
    f = Filter([], MINE)
    f.note_outbound(parse(tcp_packet(US, 40000, PEER, 80, TCP_SYN)), 0)
    f.note_outbound(parse(icmp_packet(US, PEER, ICMP4_ECHO_REQUEST)), 0)
    assert f.flow_count() == 0


def test_a_new_filter_can_keep_the_flows_of_the_last():
    old = Filter([], MINE)
    old.note_outbound(parse(udp_packet(US, 40000, PEER, 53)), 0)
    new = Filter(SSH_FROM_PEER, MINE, share_state_with=old)
    assert verdict(new, udp_packet(PEER, 53, US, 40000), 10) is None
    assert verdict(Filter(SSH_FROM_PEER, MINE), udp_packet(PEER, 53, US, 40000), 10) == "no_rule"


def test_udp_to_an_allowed_port_passes_by_rule():
    f = Filter([{"SrcIPs": ["*"], "DstPorts": [ports(US, 53, 53)], "IPProto": [PROTO_UDP]}], MINE)
    assert verdict(f, udp_packet(PEER, 5000, US, 53)) is None
    assert f.check_inbound(syn(PEER, US, 53), 0) == "no_rule"  # UDP only


# --- ICMP -------------------------------------------------------------------------


def test_echo_replies_and_errors_always_pass():
    f = Filter([], MINE)
    for icmp_type in (ICMP4_ECHO_REPLY, ICMP4_UNREACHABLE, ICMP4_TIME_EXCEEDED):
        assert verdict(f, icmp_packet(STRANGER, US, icmp_type)) is None, icmp_type
    for icmp_type in (ICMP6_ECHO_REPLY, ICMP6_PACKET_TOO_BIG):
        assert verdict(f, icmp_packet(STRANGER6, US6, icmp_type)) is None, icmp_type
    assert f.stats.accepted == {"icmp_response": 5}


def test_a_ping_passes_if_any_rule_admits_the_source():
    # Tailscale: "if any port is open to an IP, allow ICMP to it", whatever the rule's protocols.
    f = Filter([{"SrcIPs": [PEER], "DstPorts": [ports(US, 22, 22)], "IPProto": [PROTO_TCP]}], MINE)
    assert verdict(f, icmp_packet(PEER, US, ICMP4_ECHO_REQUEST)) is None
    assert verdict(f, icmp_packet(STRANGER, US, ICMP4_ECHO_REQUEST)) == "no_rule"
    assert verdict(f, icmp_packet(PEER6, US6, ICMP6_ECHO_REQUEST)) == "no_rule"  # no IPv6 rule


def test_an_echo_reply_with_a_nonzero_code_is_not_a_reply():
    f = Filter([], MINE)
    assert verdict(f, icmp_packet(PEER, US, ICMP4_ECHO_REPLY, 1)) == "no_rule"


# --- IPProto ----------------------------------------------------------------------


def test_no_ipproto_means_tcp_udp_and_icmp():
    f = Filter([{"SrcIPs": ["*"], "DstPorts": [ports("*", 0, 65535)]}], MINE)
    assert f.check_inbound(syn(PEER, US, 22), 0) is None
    assert verdict(f, udp_packet(PEER, 1, US, 2)) is None
    assert verdict(f, ip(PEER, US, 47, b"\x00\x00\x08\x00")) == "no_rule"  # GRE is not a default


def test_a_portless_protocol_needs_every_port_open():
    gre_all = [{"SrcIPs": [PEER], "DstPorts": [ports(US, 0, 65535)], "IPProto": [47]}]
    gre_some = [{"SrcIPs": [PEER], "DstPorts": [ports(US, 0, 1023)], "IPProto": [47]}]
    gre = ip(PEER, US, 47, b"\x00\x00\x08\x00")
    assert verdict(Filter(gre_all, MINE), gre) is None
    assert verdict(Filter(gre_some, MINE), gre) == "no_rule"
    assert verdict(Filter(gre_all, MINE), ip(STRANGER, US, 47, b"\x00\x00\x08\x00")) == "no_rule"


def test_ipproto_numbers_outside_a_byte_are_ignored():
    f = Filter([{"SrcIPs": ["*"], "DstPorts": [ports("*", 22, 22)], "IPProto": [6, 300, -1]}], MINE)
    assert f.check_inbound(syn(PEER, US, 22), 0) is None
    only_bad = Filter([{"SrcIPs": ["*"], "DstPorts": [ports("*", 22, 22)], "IPProto": [300]}], MINE)
    assert only_bad.check_inbound(syn(PEER, US, 22), 0) == "no_rule"


# --- odd packets ------------------------------------------------------------------


def test_a_later_fragment_to_us_passes():
    f = Filter([], MINE)
    assert verdict(f, ip4(PEER, US, PROTO_UDP, b"x" * 64, frag=185)) is None
    later6 = ip6(PEER6, US6, PROTO_IPV6_FRAGMENT, b"r" * 40, fragment6(PROTO_UDP, 1232, False))
    assert verdict(f, later6) is None
    assert verdict(f, ip4(PEER, "100.64.0.9", PROTO_UDP, b"x" * 64, frag=185)) == "not_local"
    assert f.stats.accepted == {"fragment": 2}


def test_a_first_fragment_is_judged_by_its_ports():
    f = Filter(SSH_FROM_PEER, MINE)
    first = ip6(PEER6, US6, PROTO_IPV6_FRAGMENT, udp(4000, 53, b"q" * 20), fragment6(PROTO_UDP, 0, True))
    assert verdict(f, first) == "no_rule"


def test_ipv6_hop_by_hop_tsmp_and_garbage_are_dropped():
    f = Filter.allow_all(MINE)
    hop_by_hop = bytes((PROTO_UDP, 0, 5, 2, 0, 0, 1, 0)) + udp(1, 2)
    assert verdict(f, ip6(PEER6, US6, PROTO_HOPOPT, hop_by_hop)) == "unknown_proto"
    assert verdict(f, ip(PEER, US, PROTO_TSMP, b"\x00" * 8)) == "tsmp"
    assert f.check_inbound_bytes(b"\x45garbage", 0) == "bad_packet"
    assert f.check_inbound_bytes(tcp_packet(PEER, 1, US, 22, TCP_SYN), 0) is None
    assert f.stats.dropped == {"unknown_proto": 1, "tsmp": 1, "bad_packet": 1}


# --- whole filters ----------------------------------------------------------------


def test_allow_all_is_tailscales_filter_allow_all():
    f = Filter(ALLOW_ALL_RULES, MINE)
    assert f.check_inbound(syn(STRANGER, US, 1), 0) is None
    assert f.check_inbound(syn(STRANGER6, US6, 65535), 0) is None
    assert verdict(Filter.allow_all(), tcp_packet(PEER, 1, "10.9.9.9", 2, TCP_SYN)) is None  # local "*"


def test_no_rules_blocks_new_connections_but_not_answers():
    # "PacketFilter": [] from control blocks everything new; None (Go's nil) is the same.
    for f in (Filter([], MINE), Filter(None, MINE)):
        assert f.check_inbound(syn(PEER, US, 22), 0) == "no_rule"
        assert verdict(f, tcp_packet(PEER, 22, US, 51000, TCP_SYN | TCP_ACK)) is None


def test_headscales_explicit_default_protocols():
    # headscale writes the default protocols out: TCP, UDP, ICMP, ICMPv6.
    f = Filter([{"SrcIPs": [PEER], "DstPorts": [ports(US, 0, 65535)], "IPProto": [6, 17, 1, 58]}], MINE)
    assert f.check_inbound(syn(PEER, US, 8080), 0) is None
    assert verdict(f, udp_packet(PEER, 1, US, 2)) is None
    assert verdict(f, icmp_packet(PEER, US, ICMP4_ECHO_REQUEST)) is None


def test_deny_all_drops_even_answers():
    f = Filter.deny_all()
    assert verdict(f, tcp_packet(PEER, 22, US, 51000, TCP_ACK)) == "deny_all"
    assert verdict(f, icmp_packet(PEER, US, ICMP4_ECHO_REPLY)) == "deny_all"


def test_sources_as_prefixes_and_ranges():
    # The shapes Tailscale's control sends: CIDRs, and "a-b" ranges.
    f = Filter(
        [
            {"SrcIPs": ["100.64.0.0/30"], "DstPorts": [ports(US, 80, 80)]},
            {"SrcIPs": ["100.64.0.10-100.64.0.12"], "DstPorts": [ports(US, 81, 81)]},
            {"SrcIPs": ["fd7a:115c:a1e0::/48"], "DstPorts": [ports(US6, 80, 80)]},
        ],
        MINE,
    )
    assert f.check_inbound(syn("100.64.0.3", US, 80), 0) is None
    assert f.check_inbound(syn("100.64.0.4", US, 80), 0) == "no_rule"
    assert [f.check_inbound(syn("100.64.0.%d" % i, US, 81), 0) for i in (9, 10, 12, 13)] == [
        "no_rule",
        None,
        None,
        "no_rule",
    ]
    assert f.check_inbound(syn("fd7a:115c:a1e0:ab12::99", US6, 80), 0) is None
    assert f.check_inbound(syn("fd7a:115c:a1e1::1", US6, 80), 0) == "no_rule"


def test_destinations_as_prefixes():
    # A policy dst such as "100.64.0.0/10:443" reaches each node cut down to the prefix holding it.
    f = Filter([{"SrcIPs": ["*"], "DstPorts": [ports("100.64.0.0/10", 443, 443)]}], MINE)
    assert f.check_inbound(syn(PEER, US, 443), 0) is None
    assert f.check_inbound(syn(PEER6, US6, 443), 0) == "no_rule"  # no IPv6 destination


def test_capability_sources_and_capgrant_rules_admit_nothing():
    f = Filter(
        [
            {"SrcIPs": ["cap:tailscale.com/cap/funnel"], "DstPorts": [ports(US, 443, 443)]},
            {
                "SrcIPs": [PEER],
                "CapGrant": [
                    {"Dsts": ["100.64.0.1/32"], "CapMap": {"tailscale.com/cap/drive": [{"shares": ["*"]}]}}
                ],
            },
        ],
        MINE,
    )
    assert f.check_inbound(syn(PEER, US, 443), 0) == "no_rule"
    assert verdict(f, icmp_packet(PEER, US, ICMP4_ECHO_REQUEST)) == "no_rule"


def test_missing_fields_take_gos_zero_values():
    f = Filter([{"SrcIPs": [PEER], "DstPorts": [{"IP": US}]}, {"DstPorts": [ports("*", 0, 65535)]}], MINE)
    assert f.check_inbound(syn(PEER, US, 22), 0) == "no_rule"  # Ports absent: port 0 only
    assert f.check_inbound(syn(PEER, US, 0), 0) is None


# --- rules that do not compile ----------------------------------------------------


def test_bad_rules_are_refused_whole():
    def bad(rules):
        raises(RemoteProtocolError, "bad_filter", Filter, rules, MINE)

    bad({"SrcIPs": ["*"]})
    bad(["*"])
    bad([{"SrcIPs": "*", "DstPorts": [ports("*", 0, 65535)]}])
    bad([{"SrcIPs": [42], "DstPorts": [ports("*", 0, 65535)]}])
    bad([{"SrcIPs": ["*"], "SrcBits": [32], "DstPorts": [ports("*", 0, 65535)]}])
    bad([{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Bits": 32, "Ports": {"First": 0, "Last": 1}}]}])
    bad([{"SrcIPs": ["100.64.0.1/10"], "DstPorts": [ports("*", 0, 65535)]}])  # host bits set
    bad([{"SrcIPs": ["100.64.0.0/33"], "DstPorts": [ports("*", 0, 65535)]}])
    bad([{"SrcIPs": ["pi.tailnet"], "DstPorts": [ports("*", 0, 65535)]}])
    bad([{"SrcIPs": ["100.64.0.9-100.64.0.1"], "DstPorts": [ports("*", 0, 65535)]}])
    bad([{"SrcIPs": ["100.64.0.1-fd7a::1"], "DstPorts": [ports("*", 0, 65535)]}])
    bad([{"SrcIPs": ["*"], "DstPorts": [ports("*", 0, 65536)]}])
    bad([{"SrcIPs": ["*"], "DstPorts": [ports("*", True, 1)]}])
    bad([{"SrcIPs": ["*"], "DstPorts": [{"Ports": {"First": 0, "Last": 1}}]}])
    bad([{"SrcIPs": ["*"], "DstPorts": [ports("cap:x", 0, 1)]}])
    bad([{"SrcIPs": ["*"], "DstPorts": [ports("*", 0, 1)], "IPProto": ["tcp"]}])


def test_bad_local_addresses_are_refused():
    raises(RemoteProtocolError, "bad_filter", Filter, [], ["100.64.0.1/40"])
