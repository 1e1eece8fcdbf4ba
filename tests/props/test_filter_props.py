"""Properties of the packet filter.

* Any rules decoded from JSON compile or raise RemoteProtocolError("bad_filter"), nothing else.
* The filter never raises on a packet that parsed, and its verdict is None or a known drop reason.
* Its verdicts agree with a reference model written with the stdlib's `ipaddress`, straight from
  the order of checks in Tailscale's wgengine/filter (the module docstring's list).
"""

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet import packet
from meshlet.errors import RemoteProtocolError
from meshlet.filter import DROP_REASONS, Filter
from meshlet.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_TSMP, PROTO_UDP
from meshlet_testing import ippackets
from meshlet_testing.garbage import parses_or_rejects

no_deadline = settings(deadline=None, max_examples=300)

# A small address space, so that rules and packets meet often.
v4_hosts = st.integers(min_value=0, max_value=15).map(lambda i: "100.64.0.%d" % i)
v6_hosts = st.integers(min_value=0, max_value=15).map(lambda i: "fd7a:115c:a1e0::%x" % i)
odd_dsts = st.sampled_from(
    ["224.0.0.251", "169.254.1.1", "169.254.169.254", "ff02::1", "fe80::1", "10.0.0.1"]
)
LOCAL = ["100.64.0.1", "100.64.0.8/30", "fd7a:115c:a1e0::1"]


def prefix(host: str, bits: int) -> str:
    return str(ipaddress.ip_network("%s/%d" % (host, bits), strict=False))


def ip_range(a: str, b: str) -> str:
    lo, hi = sorted([ipaddress.ip_address(a), ipaddress.ip_address(b)])
    return "%s-%s" % (lo, hi)


ip_sets = st.one_of(
    st.just("*"),
    v4_hosts,
    v6_hosts,
    st.builds(prefix, v4_hosts, st.integers(min_value=26, max_value=32)),
    st.builds(prefix, v6_hosts, st.integers(min_value=122, max_value=128)),
    st.builds(ip_range, v4_hosts, v4_hosts),
    st.builds(ip_range, v6_hosts, v6_hosts),
    st.just("cap:tailscale.com/cap/x"),
)
# Destinations lean towards our own addresses, as control's filters for this node do.
dst_sets = st.one_of(
    st.sampled_from(["*", "100.64.0.1", "100.64.0.8/30", "fd7a:115c:a1e0::1", "100.64.0.0/28"]),
    ip_sets.filter(lambda s: not s.startswith("cap:")),
)
port_ranges = st.tuples(st.integers(0, 65535), st.integers(0, 65535)) | st.sampled_from(
    [(0, 65535), (22, 22)]
)
ip_protos = st.one_of(
    st.none(),
    st.just([]),
    st.lists(st.sampled_from([1, 6, 17, 47, 58, 132, 300]), min_size=1, max_size=4),
)


@st.composite
def rules(draw: Any) -> "list[dict[str, Any]]":
    out = []
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        rule: "dict[str, Any]" = {"SrcIPs": draw(st.lists(ip_sets, min_size=1, max_size=3))}
        dsts = draw(st.lists(st.tuples(dst_sets, port_ranges), min_size=1, max_size=3))
        rule["DstPorts"] = [{"IP": ip, "Ports": {"First": first, "Last": last}} for ip, (first, last) in dsts]
        protos = draw(ip_protos)
        if protos is not None:
            rule["IPProto"] = protos
        out.append(rule)
    return out


@st.composite
def packets(draw: Any) -> bytes:
    v6 = draw(st.booleans())
    src = draw(v6_hosts if v6 else v4_hosts)
    ours = ["fd7a:115c:a1e0::1"] if v6 else ["100.64.0.1", "100.64.0.8", "100.64.0.9", "100.64.0.11"]
    dst = draw(
        st.one_of(
            st.sampled_from(ours), v6_hosts if v6 else v4_hosts, odd_dsts.filter(lambda a: (":" in a) == v6)
        )
    )
    sport, dport = draw(st.integers(0, 65535)), draw(st.sampled_from([0, 22, 53, 80, 443, 65535]))
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "sctp", "gre", "tsmp", "fragment"]))
    if kind == "tcp":
        return ippackets.ip(src, dst, PROTO_TCP, ippackets.tcp(sport, dport, draw(st.integers(0, 255))))
    if kind == "udp":
        return ippackets.ip(src, dst, PROTO_UDP, ippackets.udp(sport, dport))
    if kind == "icmp":
        icmp_type = draw(st.sampled_from([0, 3, 8, 11, 12, 1, 2, 4, 128, 129, 5]))
        return ippackets.icmp_packet(src, dst, icmp_type, draw(st.sampled_from([0, 1])))
    if kind == "sctp":
        return ippackets.ip(
            src, dst, PROTO_SCTP, sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(8)
        )
    if kind == "gre":
        return ippackets.ip(src, dst, 47, b"\x00\x00\x08\x00")
    if kind == "tsmp":
        return ippackets.ip(src, dst, PROTO_TSMP, bytes(8))
    if v6:
        return ippackets.ip6(src, dst, 44, bytes(40), ippackets.fragment6(PROTO_UDP, 1232, False))
    return ippackets.ip4(src, dst, PROTO_UDP, bytes(40), frag=185)


# --- the reference model ---------------------------------------------------------


def _nets(text: str) -> "list[Any]":
    if text == "*":
        return [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    if text.startswith("cap:"):
        return []
    if "-" in text:
        a, b = (ipaddress.ip_address(x) for x in text.split("-"))
        return list(ipaddress.summarize_address_range(a, b))
    return [ipaddress.ip_network(text)]


def _in(addr: Any, texts: "list[str]") -> bool:
    return any(addr.version == n.version and addr in n for t in texts for n in _nets(t))


def model(rules: "list[dict[str, Any]]", local: "list[str]", pkt: packet.Packet) -> "str | None":
    dst = ipaddress.ip_address(pkt.dst)
    src = ipaddress.ip_address(pkt.src)
    if pkt.proto == 0:
        return "unknown_proto"
    if dst.is_multicast:
        return "multicast"
    if dst.is_link_local and str(dst) != "169.254.169.254":
        return "link_local"
    if not _in(dst, local):
        return "not_local"
    if pkt.fragment:
        return None

    def protos(rule: "dict[str, Any]") -> "list[int]":
        return rule.get("IPProto") or [6, 17, 1, 58]

    def admits(rule: "dict[str, Any]", check_proto: bool, port_ok: Any) -> bool:
        if check_proto and pkt.proto not in protos(rule):
            return False
        if not _in(src, rule["SrcIPs"]):
            return False
        return any(
            _in(dst, [d["IP"]]) and port_ok(d["Ports"]["First"], d["Ports"]["Last"]) for d in rule["DstPorts"]
        )

    def ported(first: int, last: int) -> bool:
        return first <= pkt.dst_port <= last

    def all_ports(first: int, last: int) -> bool:
        return (first, last) == (0, 65535)

    if pkt.proto == PROTO_TCP and pkt.tcp_flags & 0x12 != 0x02:
        return None
    if pkt.proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
        return None if any(admits(r, True, ported) for r in rules) else "no_rule"
    if pkt.proto == (PROTO_ICMP if pkt.version == 4 else PROTO_ICMPV6):
        replies = {0} if pkt.version == 4 else {129}
        errors = {3, 11, 12} if pkt.version == 4 else {1, 2, 3, 4}
        if (pkt.icmp_type in replies and pkt.icmp_code == 0) or pkt.icmp_type in errors:
            return None
        return None if any(admits(r, False, lambda a, b: True) for r in rules) else "no_rule"
    if pkt.proto == PROTO_TSMP:
        return "tsmp"
    return None if any(admits(r, True, all_ports) for r in rules) else "no_rule"


# --- properties ------------------------------------------------------------------


@no_deadline
@given(rules(), packets())
def test_the_filter_agrees_with_the_reference_model(rule_set: "list[dict[str, Any]]", data: bytes) -> None:
    pkt = packet.parse(data)
    f = Filter(rule_set, LOCAL)
    assert f.check_inbound(pkt, 0) == model(rule_set, LOCAL, pkt)


@no_deadline
@given(rules(), st.binary(max_size=120), packets())
def test_the_filter_never_raises_on_any_packet(
    rule_set: "list[dict[str, Any]]", garbage: bytes, data: bytes
) -> None:
    f = Filter(rule_set, LOCAL, flow_max=4)
    for i, candidate in enumerate((garbage, data)):
        pkt = parses_or_rejects(packet.parse, candidate)
        if pkt is not None:
            f.note_outbound(pkt, i)
            assert f.check_inbound(pkt, i) in (None,) + DROP_REASONS
        assert f.check_inbound_bytes(candidate, i) in (None,) + DROP_REASONS


@no_deadline
@given(rules(), packets())
def test_deny_all_denies_everything(rule_set: "list[dict[str, Any]]", data: bytes) -> None:
    assert Filter.deny_all().check_inbound(packet.parse(data), 0) == "deny_all"


@no_deadline
@given(
    st.tuples(v4_hosts, v4_hosts) | st.tuples(v6_hosts, v6_hosts),
    st.integers(1, 65535),
    st.integers(1, 65535),
)
def test_an_answer_to_any_udp_flow_we_opened_passes(
    hosts: "tuple[str, str]", our_port: int, their_port: int
) -> None:
    us, them = hosts
    f = Filter([], [us])
    f.note_outbound(packet.parse(ippackets.udp_packet(us, our_port, them, their_port)), 0)
    assert f.check_inbound(packet.parse(ippackets.udp_packet(them, their_port, us, our_port)), 1) is None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 70000)
    | st.text(max_size=20)
    | st.sampled_from(["*", "100.64.0.1"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "SrcIPs",
                    "DstPorts",
                    "IPProto",
                    "IP",
                    "Ports",
                    "First",
                    "Last",
                    "Bits",
                    "SrcBits",
                    "CapGrant",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@no_deadline
@given(json_values)
def test_any_json_compiles_or_is_a_bad_filter(doc: Any) -> None:
    try:
        Filter(doc, LOCAL)
    except RemoteProtocolError as e:
        assert e.reason == "bad_filter"
