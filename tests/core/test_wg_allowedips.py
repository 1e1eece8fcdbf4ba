"""Crypto-key routing: longest-prefix match, IPv4 and IPv6, insert/remove/replace."""

from meshlet.errors import LocalProtocolError
from meshlet.wg.allowedips import AllowedIPs
from meshlet.wire import parse_ip
from meshlet_testing.pair import ipv4_packet, ipv6_packet


def _table():
    t = AllowedIPs()
    t.insert(parse_ip("0.0.0.0"), 0, "exit")
    t.insert(parse_ip("10.0.0.0"), 8, "big")
    t.insert(parse_ip("10.1.0.0"), 16, "mid")
    t.insert(parse_ip("10.1.2.3"), 32, "host")
    t.insert(parse_ip("fd7a:115c:a1e0::"), 48, "tailnet6")
    t.insert(parse_ip("fd7a:115c:a1e0::1"), 128, "host6")
    return t


def test_longest_prefix_wins():
    t = _table()
    assert t.lookup(parse_ip("10.1.2.3")) == "host"
    assert t.lookup(parse_ip("10.1.2.4")) == "mid"
    assert t.lookup(parse_ip("10.2.0.1")) == "big"
    assert t.lookup(parse_ip("192.0.2.1")) == "exit"
    assert t.lookup(parse_ip("fd7a:115c:a1e0::1")) == "host6"
    assert t.lookup(parse_ip("fd7a:115c:a1e0::2")) == "tailnet6"
    assert t.lookup(parse_ip("2001:db8::1")) is None  # no IPv6 default route
    assert t.lookup(b"\x01\x02") is None


def test_host_bits_are_cleared_and_reinsert_moves_the_prefix():
    t = AllowedIPs()
    t.insert(parse_ip("192.168.7.200"), 24, "p1")
    assert t.lookup(parse_ip("192.168.7.1")) == "p1"
    assert t.entries_for_peer("p1") == [(parse_ip("192.168.7.0"), 24)]
    t.insert(parse_ip("192.168.7.0"), 24, "p2")  # another peer takes it over
    assert t.lookup(parse_ip("192.168.7.1")) == "p2"
    assert t.entries_for_peer("p1") == []


def test_remove_only_what_the_peer_holds():
    t = _table()
    t.remove(parse_ip("10.1.0.0"), 16, "big")  # not big's prefix: ignored
    assert t.lookup(parse_ip("10.1.9.9")) == "mid"
    t.remove(parse_ip("10.1.0.0"), 16, "mid")
    assert t.lookup(parse_ip("10.1.9.9")) == "big"
    t.remove_by_peer("big")
    assert t.lookup(parse_ip("10.1.9.9")) == "exit"
    assert t.lookup(parse_ip("10.1.2.3")) == "host"


def test_entries_for_peer_lists_both_families():
    t = AllowedIPs()
    t.insert(parse_ip("100.64.0.1"), 32, "p")
    t.insert(parse_ip("fd7a:115c:a1e0::1"), 128, "p")
    t.insert(parse_ip("10.0.0.0"), 8, "p")
    assert t.entries_for_peer("p") == [
        (parse_ip("100.64.0.1"), 32),
        (parse_ip("10.0.0.0"), 8),
        (parse_ip("fd7a:115c:a1e0::1"), 128),
    ]


def test_lookup_packet_reads_source_and_destination():
    t = _table()
    p4 = ipv4_packet(parse_ip("10.1.2.3"), parse_ip("10.9.9.9"))
    assert t.lookup_packet(p4, False, True) == "host"
    assert t.lookup_packet(p4, False, False) == "big"
    p6 = ipv6_packet(parse_ip("fd7a:115c:a1e0::1"), parse_ip("fd7a:115c:a1e0::9"))
    assert t.lookup_packet(p6, True, True) == "host6"
    assert t.lookup_packet(p6, True, False) == "tailnet6"


def test_bad_prefixes_are_caller_errors():
    t = AllowedIPs()
    bad = ((parse_ip("10.0.0.0"), 33), (parse_ip("::"), 129), (parse_ip("10.0.0.0"), -1), (b"\x01", 1))
    for ip, cidr in bad:
        try:
            t.insert(ip, cidr, "p")
        except LocalProtocolError as e:
            assert e.reason in ("bad_prefix", "bad_ip")
        else:
            raise AssertionError("accepted %r/%d" % (ip, cidr))
