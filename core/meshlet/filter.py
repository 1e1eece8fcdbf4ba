"""Tailscale's packet filter for packets arriving from peers (wgengine/filter).

Control sends each node the rules that admit traffic *to* it (the netmap's
`PacketFilter`, a list of tailcfg.FilterRule, control.md §9.2):

    {"SrcIPs":   ["*", "100.64.0.2", "100.64.0.0/10", "fd7a:115c:a1e0::1", "10.0.0.1-10.0.0.9", "cap:x"],
     "DstPorts": [{"IP": "*" | addr | prefix | range, "Ports": {"First": 22, "Last": 22}}],
     "IPProto":  [6, 17]}           # absent or empty: TCP, UDP, ICMPv4, ICMPv6

`"*"` is every IPv4 and every IPv6 address. A `cap:` source names a peer
capability, which this node does not track, so it never matches. Rules with
`CapGrant` grant application capabilities, not packets; they are skipped. A
rule applies to one address family when it has both sources and destinations
of that family. No rules at all (`[]`) blocks every new inbound connection.

The verdict on one inbound packet, in Tailscale's order (`Filter.pre`,
`runIn4`/`runIn6`):

1. protocol 0 (IPv6 hop-by-hop or garbage): drop "unknown_proto";
2. to a multicast address: drop "multicast"; to a link-local unicast address
   (169.254/16 except 169.254.169.254, fe80::/10): drop "link_local";
3. to an address that is not ours: drop "not_local", so a compromised peer
   cannot use us to reach addresses we never advertised;
4. a later fragment: accept (its first fragment was judged; meshlet checks
   "not_local" first, Tailscale after, which changes nothing: a first
   fragment to a foreign address never gets through, so neither can the rest);
5. TCP: anything but a bare SYN (flags & (SYN|ACK) != SYN) belongs to an
   existing connection and is accepted, which is what lets our own outgoing
   connections work; a SYN needs a rule matching protocol, source,
   destination and port;
6. UDP and SCTP: accepted if it answers a flow we sent (see below), else a
   rule must match as for TCP;
7. ICMP (ICMPv4 in IPv4, ICMPv6 in IPv6): echo replies and errors
   (unreachable, time exceeded, parameter problem, packet too big) are
   accepted; anything else (echo requests) if any rule admits this source to
   this destination, whatever its protocols and ports;
8. TSMP (protocol 99): dropped, "tsmp". tailscaled consumes these in-tunnel
   messages itself before its filter; this node does not speak TSMP yet and
   must not hand them to the OS;
9. any other protocol: accepted if a rule names the protocol and opens all
   ports (0-65535) of this destination to this source.

Everything else is dropped with "no_rule". Drop reasons are short and stable;
they key `stats.dropped`. "bad_packet" is counted by `check_inbound_bytes`
for bytes that do not parse, and "deny_all" by `Filter.deny_all()`.

Flows: `note_outbound` records each UDP/SCTP packet we send, reversed, so the
answer (same protocol, addresses and ports swapped) is let in without a rule.
Tailscale keeps the last 512 flows in an LRU and never expires them; this
keeps at most `flow_max` (512) and also forgets a flow `flow_timeout_ms` after
it was last used in either direction (Linux conntrack's UDP stream timeout,
120 s), so an old port pair does not stay open forever.

Rules are compiled once, in the constructor, into tuples of address ranges:
an address is bytes, and for equal-length bytes `lo <= addr <= hi` is an
address-range test, so a prefix, a range and `*` are all one (lo, hi) pair
and the per-packet path does byte comparisons only (no big integers, which
small MicroPython ports lack).

Bad rules raise `RemoteProtocolError("bad_filter")` for the whole filter
(Tailscale keeps the rules that parse and logs the rest; a half-understood
filter is not something to guess at here). That includes the deprecated
`SrcBits` and `DstPorts[].Bits`, which Tailscale also refuses outright.
"""

from ._compat import TYPE_CHECKING, const
from .errors import LocalProtocolError, RemoteProtocolError
from .packet import (
    ICMP4_ECHO_REPLY,
    ICMP4_PARAM_PROBLEM,
    ICMP4_TIME_EXCEEDED,
    ICMP4_UNREACHABLE,
    ICMP6_ECHO_REPLY,
    ICMP6_PACKET_TOO_BIG,
    ICMP6_PARAM_PROBLEM,
    ICMP6_TIME_EXCEEDED,
    ICMP6_UNREACHABLE,
    PROTO_HOPOPT,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_TSMP,
    PROTO_UDP,
    TCP_SYN,
    Packet,
    parse,
)
from .wire import parse_ip

if TYPE_CHECKING:
    from typing import Any, Iterable

    Range = tuple[bytes, bytes]
    DstRange = tuple[bytes, bytes, int, int]
    Match = tuple[tuple[int, ...], tuple[Range, ...], tuple[DstRange, ...]]
    FlowKey = tuple[int, bytes, int, bytes, int]

# --- specification (tailcfg, wgengine/filter) -----------------------------------

DEFAULT_PROTOS = (PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6)
ALLOW_ALL_RULES = [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]
"""tailcfg.FilterAllowAll: what control sends when there is no policy."""

_SYN_ACK = const(0x12)  # TCP_SYN | TCP_ACK
_GCP_METADATA = b"\xa9\xfe\xa9\xfe"  # 169.254.169.254, the one link-local address Tailscale lets through
_V4_ALL = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff")
_V6_ALL = (bytes(16), b"\xff" * 16)

# --- implementation -------------------------------------------------------------

FLOW_MAX = 512  # Tailscale's lruMax
FLOW_TIMEOUT_MS = 120_000  # Linux's nf_conntrack_udp_timeout_stream

ACCEPT_WHYS = ("rule", "established", "flow", "icmp_response", "icmp", "fragment", "other_proto")
DROP_REASONS = (
    "no_rule",
    "not_local",
    "multicast",
    "link_local",
    "unknown_proto",
    "tsmp",
    "bad_packet",
    "deny_all",
)


class FilterStats:
    """Counters: `accepted` by why ("rule", "established", "flow", ...), `dropped` by reason."""

    __slots__ = ("accepted", "dropped")

    def __init__(self) -> None:
        self.accepted: "dict[str, int]" = {}
        self.dropped: "dict[str, int]" = {}


class Filter:
    """Judges packets from peers against the netmap's rules; remembers our UDP flows.

    Args:
        rules: the netmap's packet filter, a list of tailcfg.FilterRule dicts
            as decoded from JSON (None is no rules, like Go's nil slice).
        local_ips: this node's addresses: 4- or 16-byte `bytes`, or text
            (an address, a prefix such as the self node's "100.64.0.1/32", a
            range "a-b", or "*"). Packets to anything else are "not_local".
        share_state_with: a previous Filter whose flows and counters this one
            takes over (Tailscale's shareStateWith), so a new netmap does not
            cut off answers to flows in progress.
        flow_max, flow_timeout_ms: the bounds of the outbound-flow table.

    Raises:
        RemoteProtocolError("bad_filter"): a rule or local address that
            cannot be understood.
    """

    def __init__(
        self,
        rules: "Iterable[Any] | None",
        local_ips: "Iterable[bytes | str]",
        share_state_with: "Filter | None" = None,
        flow_max: int = FLOW_MAX,
        flow_timeout_ms: int = FLOW_TIMEOUT_MS,
    ) -> None:
        if flow_max < 1 or flow_timeout_ms < 1:
            raise LocalProtocolError("bad_config", "flow_max and flow_timeout_ms must be positive")
        self._deny = False
        self._matches4, self._matches6 = _compile(rules)
        self._local4: "tuple[Range, ...]" = ()
        self._local6: "tuple[Range, ...]" = ()
        self.set_local_ips(local_ips)
        self._flow_max = flow_max
        self._flow_timeout_ms = flow_timeout_ms
        self._flows: "dict[FlowKey, int]" = {}
        self.stats = FilterStats()
        if share_state_with is not None:
            self._flows = share_state_with._flows
            self.stats = share_state_with.stats

    @classmethod
    def allow_all(cls, local_ips: "Iterable[bytes | str]" = ("*",)) -> "Filter":
        """tailcfg.FilterAllowAll: TCP, UDP and ICMP from anyone.

        With the default local_ips "*" a peer may also address packets to
        anything, as Tailscale's NewAllowAllForTest does; pass the node's own
        addresses unless that is what you want.
        """
        return cls(ALLOW_ALL_RULES, local_ips)

    @classmethod
    def deny_all(cls) -> "Filter":
        """Drops everything, replies included ("deny_all"): for a node without a netmap yet."""
        f = cls([], ())
        f._deny = True
        return f

    def set_local_ips(self, local_ips: "Iterable[bytes | str]") -> None:
        """Replaces the set of addresses that count as ours (the rules stay)."""
        local4: "list[Range]" = []
        local6: "list[Range]" = []
        for item in local_ips:
            if isinstance(item, str):
                for lo, hi in _parse_ip_set(item):
                    (local4 if len(lo) == 4 else local6).append((lo, hi))
            elif isinstance(item, (bytes, bytearray)) and len(item) in (4, 16):
                ip = bytes(item)
                (local4 if len(ip) == 4 else local6).append((ip, ip))
            else:
                raise LocalProtocolError("bad_ip", "local address %r" % (item,))
        self._local4 = tuple(local4)
        self._local6 = tuple(local6)

    # -- per packet ------------------------------------------------------------

    def check_inbound(self, pkt: Packet, now_ms: int) -> "str | None":
        """None to accept `pkt` from a peer, or the reason to drop it (counted either way)."""
        why = self._judge(pkt, now_ms)
        if why is None:
            return None
        dropped = self.stats.dropped
        dropped[why] = dropped.get(why, 0) + 1
        return why

    def check_inbound_bytes(self, data: "bytes | bytearray", now_ms: int) -> "str | None":
        """`check_inbound` for raw bytes; bytes that do not parse are dropped as "bad_packet"."""
        try:
            pkt = parse(data)
        except RemoteProtocolError:
            dropped = self.stats.dropped
            dropped["bad_packet"] = dropped.get("bad_packet", 0) + 1
            return "bad_packet"
        return self.check_inbound(pkt, now_ms)

    def note_outbound(self, pkt: Packet, now_ms: int) -> None:
        """Records a UDP/SCTP packet we send to a peer, so its answers are let in."""
        proto = pkt.proto
        if (proto != PROTO_UDP and proto != PROTO_SCTP) or pkt.fragment:
            return
        key = (proto, pkt.dst, pkt.dst_port, pkt.src, pkt.src_port)
        flows = self._flows
        if key not in flows and len(flows) >= self._flow_max:
            self._evict(now_ms)
        flows[key] = now_ms + self._flow_timeout_ms

    def flow_count(self) -> int:
        return len(self._flows)

    def _accept(self, why: str) -> "str | None":
        """Counts an accept; returns None, the accept verdict, so `_judge` can return it."""
        accepted = self.stats.accepted
        accepted[why] = accepted.get(why, 0) + 1
        return None

    def _judge(self, pkt: Packet, now_ms: int) -> "str | None":
        if self._deny:
            return "deny_all"
        proto = pkt.proto
        if proto == PROTO_HOPOPT:
            return "unknown_proto"
        dst = pkt.dst
        v4 = pkt.version == 4
        if v4:
            if dst[0] & 0xF0 == 0xE0:
                return "multicast"
            if dst[0] == 169 and dst[1] == 254 and dst != _GCP_METADATA:
                return "link_local"
            local = self._local4
        else:
            if dst[0] == 0xFF:
                return "multicast"
            if dst[0] == 0xFE and dst[1] & 0xC0 == 0x80:
                return "link_local"
            local = self._local6
        for lo, hi in local:
            if lo <= dst <= hi:
                break
        else:
            return "not_local"
        if pkt.fragment:
            return self._accept("fragment")
        matches = self._matches4 if v4 else self._matches6
        if proto == PROTO_TCP:
            if pkt.tcp_flags & _SYN_ACK != TCP_SYN:
                return self._accept("established")
            return self._accept("rule") if _match(matches, pkt, False) else "no_rule"
        if proto == PROTO_UDP or proto == PROTO_SCTP:
            if self._flow_hit(pkt, now_ms):
                return self._accept("flow")
            return self._accept("rule") if _match(matches, pkt, False) else "no_rule"
        if proto == (PROTO_ICMP if v4 else PROTO_ICMPV6):
            if _is_icmp_response(v4, pkt.icmp_type, pkt.icmp_code):
                return self._accept("icmp_response")
            return self._accept("icmp") if _match_ips_only(matches, pkt) else "no_rule"
        if proto == PROTO_TSMP:
            return "tsmp"
        return self._accept("other_proto") if _match(matches, pkt, True) else "no_rule"

    def _flow_hit(self, pkt: Packet, now_ms: int) -> bool:
        flows = self._flows
        if not flows:
            return False
        key = (pkt.proto, pkt.src, pkt.src_port, pkt.dst, pkt.dst_port)
        deadline = flows.get(key)
        if deadline is None:
            return False
        if deadline < now_ms:
            del flows[key]
            return False
        flows[key] = now_ms + self._flow_timeout_ms
        return True

    def _evict(self, now_ms: int) -> None:
        """Makes room: forgets expired flows, then the least recently used quarter."""
        flows = self._flows
        for key in [k for k, deadline in flows.items() if deadline < now_ms]:
            del flows[key]
        if len(flows) < self._flow_max:
            return
        # A deadline is last use + timeout, so the smallest deadlines are the
        # least recently used. Evicting a batch keeps this sort rare.
        by_age = sorted(flows.items(), key=lambda kv: kv[1])
        for key, _ in by_age[: len(flows) - (self._flow_max * 3) // 4]:
            del flows[key]


def _is_icmp_response(v4: bool, icmp_type: int, icmp_code: int) -> bool:
    """Echo replies (code 0) and error messages: answers to something we sent."""
    if v4:
        if icmp_type == ICMP4_ECHO_REPLY:
            return icmp_code == 0
        return (
            icmp_type == ICMP4_UNREACHABLE
            or icmp_type == ICMP4_TIME_EXCEEDED
            or icmp_type == ICMP4_PARAM_PROBLEM
        )
    if icmp_type == ICMP6_ECHO_REPLY:
        return icmp_code == 0
    return (
        icmp_type == ICMP6_UNREACHABLE
        or icmp_type == ICMP6_PACKET_TOO_BIG
        or icmp_type == ICMP6_TIME_EXCEEDED
        or icmp_type == ICMP6_PARAM_PROBLEM
    )


def _match(matches: "tuple[Match, ...]", pkt: Packet, all_ports_only: bool) -> bool:
    """A rule for this protocol admits src to dst:port (or, for portless protocols, to every port of dst)."""
    proto = pkt.proto
    src = pkt.src
    dst = pkt.dst
    port = pkt.dst_port
    for protos, srcs, dsts in matches:
        if proto not in protos:
            continue
        for lo, hi in srcs:
            if lo <= src <= hi:
                break
        else:
            continue
        for lo, hi, first, last in dsts:
            if lo <= dst <= hi:
                if all_ports_only:
                    if first == 0 and last == 0xFFFF:
                        return True
                elif first <= port <= last:
                    return True
    return False


def _match_ips_only(matches: "tuple[Match, ...]", pkt: Packet) -> bool:
    """Any rule admits src to dst at all, whatever its protocols and ports (Tailscale's ICMP rule)."""
    src = pkt.src
    dst = pkt.dst
    for _, srcs, dsts in matches:
        for lo, hi in srcs:
            if lo <= src <= hi:
                break
        else:
            continue
        for lo, hi, _first, _last in dsts:
            if lo <= dst <= hi:
                return True
    return False


# --- compiling rules --------------------------------------------------------------


def _compile(rules: "Iterable[Any] | None") -> "tuple[tuple[Match, ...], tuple[Match, ...]]":
    if rules is None:  # Go's nil slice: no rules
        rules = []
    if not isinstance(rules, (list, tuple)):
        raise RemoteProtocolError("bad_filter", "rules must be a list, not %s" % type(rules).__name__)
    matches4: "list[Match]" = []
    matches6: "list[Match]" = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise RemoteProtocolError("bad_filter", "rule %d is not an object" % i)
        if rule.get("SrcBits"):
            raise RemoteProtocolError("bad_filter", "rule %d: SrcBits is no longer supported" % i)
        protos = _protos(rule.get("IPProto"), i)
        srcs4: "list[Range]" = []
        srcs6: "list[Range]" = []
        for text in _strings(rule.get("SrcIPs"), "SrcIPs", i):
            for lo, hi in _parse_ip_set(text):
                (srcs4 if len(lo) == 4 else srcs6).append((lo, hi))
        dsts4: "list[DstRange]" = []
        dsts6: "list[DstRange]" = []
        for lo, hi, first, last in _dst_ports(rule.get("DstPorts"), i):
            (dsts4 if len(lo) == 4 else dsts6).append((lo, hi, first, last))
        if srcs4 and dsts4:
            matches4.append((protos, tuple(srcs4), tuple(dsts4)))
        if srcs6 and dsts6:
            matches6.append((protos, tuple(srcs6), tuple(dsts6)))
    return tuple(matches4), tuple(matches6)


def _protos(value: "Any", i: int) -> "tuple[int, ...]":
    """IPProto: absent or empty means the defaults; numbers outside 0..255 are ignored, as Tailscale does."""
    if not value:
        return DEFAULT_PROTOS
    if not isinstance(value, list):
        raise RemoteProtocolError("bad_filter", "rule %d: IPProto must be a list" % i)
    out = []
    for p in value:
        if isinstance(p, bool) or not isinstance(p, int):
            raise RemoteProtocolError("bad_filter", "rule %d: IPProto %r is not a number" % (i, p))
        if 0 <= p <= 0xFF:
            out.append(p)
    return tuple(out)


def _strings(value: "Any", field: str, i: int) -> "list[str]":
    if value is None:
        return []
    if not isinstance(value, list):
        raise RemoteProtocolError("bad_filter", "rule %d: %s must be a list" % (i, field))
    for s in value:
        if not isinstance(s, str):
            raise RemoteProtocolError("bad_filter", "rule %d: %s holds %r" % (i, field, s))
    return value


def _dst_ports(value: "Any", i: int) -> "list[tuple[bytes, bytes, int, int]]":
    if value is None:
        return []
    if not isinstance(value, list):
        raise RemoteProtocolError("bad_filter", "rule %d: DstPorts must be a list" % i)
    out = []
    for d in value:
        if not isinstance(d, dict):
            raise RemoteProtocolError("bad_filter", "rule %d: a DstPorts entry is not an object" % i)
        if d.get("Bits") is not None:
            raise RemoteProtocolError("bad_filter", "rule %d: DstPorts Bits is no longer supported" % i)
        ip = d.get("IP")
        if not isinstance(ip, str):
            raise RemoteProtocolError("bad_filter", "rule %d: DstPorts IP %r" % (i, ip))
        ports = d.get("Ports")
        if ports is None:
            ports = {}  # Go's zero PortRange: port 0 only
        if not isinstance(ports, dict):
            raise RemoteProtocolError("bad_filter", "rule %d: Ports must be an object" % i)
        first = _port(ports.get("First", 0), i)
        last = _port(ports.get("Last", 0), i)
        if ip.startswith("cap:"):
            raise RemoteProtocolError("bad_filter", "rule %d: a capability %r in DstPorts" % (i, ip))
        for lo, hi in _parse_ip_set(ip):
            out.append((lo, hi, first, last))
    return out


def _port(value: "Any", i: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise RemoteProtocolError("bad_filter", "rule %d: port %r" % (i, value))
    return value


def _parse_ip_set(text: str) -> "list[Range]":
    """`*`, an address, a prefix (no host bits set) or a range `a-b`, as (lo, hi) pairs; `cap:` as none."""
    if text == "*":
        return [_V4_ALL, _V6_ALL]
    if text.startswith("cap:"):
        return []
    try:
        if "/" in text:
            addr_text, _, bits_text = text.partition("/")
            addr = parse_ip(addr_text)
            if not bits_text.isdigit() or int(bits_text) > len(addr) * 8:
                raise RemoteProtocolError("bad_filter", "prefix length in %r" % text)
            return [_prefix_range(addr, int(bits_text), text)]
        if text.count("-") == 1:
            lo_text, _, hi_text = text.partition("-")
            lo = parse_ip(lo_text)
            hi = parse_ip(hi_text)
            if len(lo) != len(hi) or hi < lo:
                raise RemoteProtocolError("bad_filter", "bad range %r" % text)
            return [(lo, hi)]
        addr = parse_ip(text)
    except RemoteProtocolError as e:
        if e.reason == "bad_filter":
            raise
        raise RemoteProtocolError("bad_filter", "%r: %s" % (text, e.detail or e.reason))
    return [(addr, addr)]


def _prefix_range(addr: bytes, bits: int, text: str) -> "Range":
    hi = bytearray(addr)
    for i in range(len(addr)):
        network_bits = bits - 8 * i
        if network_bits >= 8:
            continue
        host_mask = 0xFF >> network_bits if network_bits > 0 else 0xFF
        if addr[i] & host_mask:
            raise RemoteProtocolError("bad_filter", "%r has host bits set" % text)
        hi[i] = addr[i] | host_mask
    return addr, bytes(hi)
