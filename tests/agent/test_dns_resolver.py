"""MagicDNS resolver (agent/meshlet_agent/dns/resolver.py): what `dig` sees when it asks 100.100.100.100.

Queries are built the way dig builds them (RD set, an EDNS OPT record
advertising 1232 bytes unless `+noedns`), answers are parsed back with
dnslib. Forwarding goes to real DNS servers on 127.0.0.1 started in the test.
"""

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, TXT, A, DNSRecord
from meshlet.control.netmap import NetMap
from meshlet_agent.dns import Resolver
from meshlet_agent.dns.names import parse_upstream, reverse_name_ip, suffix_of

SUFFIX = "meshlet.internal."
SELF = {"ID": 1, "Key": "nodekey:" + "11" * 32, "Name": "pi4.meshlet.internal.",
        "Addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]}  # fmt: skip
KITCHEN = {"ID": 2, "Key": "nodekey:" + "22" * 32, "Name": "pi-kitchen.meshlet.internal.",
           "Addresses": ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"]}  # fmt: skip
GARAGE = {
    "ID": 3,
    "Key": "nodekey:" + "33" * 32,
    "Name": "garage.meshlet.internal.",
    "Addresses": ["100.64.0.3/32"],
}
DNS_CONFIG: dict[str, Any] = {
    "Domains": ["meshlet.internal"],
    "Proxied": True,
    "ExtraRecords": [{"Name": "printer.meshlet.internal", "Type": "", "Value": "100.64.0.50"}],
}


def netmap(dns: "dict[str, Any] | None" = None, self_node: "dict[str, Any] | None" = None) -> NetMap:
    nm = NetMap()
    nm.apply({"Node": self_node or SELF, "Peers": [KITCHEN, GARAGE], "DNSConfig": dns or DNS_CONFIG,
              "Domain": "meshlet.internal"})  # fmt: skip
    return nm


def resolver(dns: "dict[str, Any] | None" = None, **kw: Any) -> Resolver:
    r = Resolver(**kw)
    r.set_netmap(netmap(dns))
    return r


def dig(name: str, qtype: str = "A", *, edns: bool = True, udp_len: int = 1232, qid: int = 0x1234) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns:
        q.add_ar(EDNS0(udp_len=udp_len))
    data = bytes(q.pack())
    return data


def answer(r: Resolver, query: bytes) -> Any:
    out = r.answer_local(query)
    assert out is not None, "expected a local answer"
    return DNSRecord.parse(out)


def run(coro: Callable[[], Awaitable[None]], timeout_s: float = 20) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout_s):
            await coro()

    asyncio.run(main())


# -- tailnet names --------------------------------------------------------------------------------


def test_a_record_for_a_peer() -> None:
    """`dig pi-kitchen.meshlet.internal A`: one authoritative A record, TTL 600, ID and question echoed."""
    a = answer(resolver(), dig("pi-kitchen.meshlet.internal"))
    assert (
        a.header.id == 0x1234
        and a.header.qr == 1
        and a.header.aa == 1
        and a.header.rd == 1
        and a.header.ra == 1
    )
    assert a.header.rcode == RCODE.NOERROR
    assert str(a.q.qname) == "pi-kitchen.meshlet.internal." and a.q.qtype == QTYPE.A
    assert [(str(rr.rname), rr.rtype, str(rr.rdata), rr.ttl) for rr in a.rr] == [
        ("pi-kitchen.meshlet.internal.", QTYPE.A, "100.64.0.2", 600)
    ]


def test_names_are_case_insensitive_and_answered_in_the_askers_spelling() -> None:
    """Resolvers randomise case (DNS 0x20) and check that the answer echoes it."""
    a = answer(resolver(), dig("Pi-KITCHEN.Meshlet.Internal"))
    assert [(str(rr.rname), str(rr.rdata)) for rr in a.rr] == [("Pi-KITCHEN.Meshlet.Internal.", "100.64.0.2")]


def test_aaaa_for_self_and_peers_follows_tailscale() -> None:
    """Self gets its IPv6; peers' IPv6 is hidden from DNS (NOERROR, no answer) unless the
    self node has the magicdns-aaaa capability, exactly as a Tailscale client does."""
    r = resolver()
    me = answer(r, dig("pi4.meshlet.internal", "AAAA"))
    assert [str(rr.rdata) for rr in me.rr] == ["fd7a:115c:a1e0::1"]
    peer = answer(r, dig("pi-kitchen.meshlet.internal", "AAAA"))
    assert peer.header.rcode == RCODE.NOERROR and peer.rr == []
    r.set_netmap(netmap(self_node=dict(SELF, CapMap={"magicdns-aaaa": []})))
    peer = answer(r, dig("pi-kitchen.meshlet.internal", "AAAA"))
    assert [(rr.rtype, str(rr.rdata)) for rr in peer.rr] == [(QTYPE.AAAA, "fd7a:115c:a1e0::2")]


def test_aaaa_for_a_node_without_ipv6_is_noerror_with_no_answer() -> None:
    a = answer(resolver(), dig("garage.meshlet.internal", "AAAA"))
    assert a.header.rcode == RCODE.NOERROR and a.rr == [] and a.header.aa == 1


def test_unknown_name_under_the_suffix_is_nxdomain() -> None:
    r = resolver()
    for name in ("nosuch.meshlet.internal", "sub.pi-kitchen.meshlet.internal", "meshlet.internal"):
        a = answer(r, dig(name))
        assert a.header.rcode == RCODE.NXDOMAIN and a.header.aa == 1, name


def test_other_types_for_a_node_name() -> None:
    """TXT/MX/...: the name exists, so NOERROR and nothing; NS/SOA: NOTIMP, as Tailscale answers."""
    r = resolver()
    assert answer(r, dig("pi-kitchen.meshlet.internal", "TXT")).header.rcode == RCODE.NOERROR
    assert answer(r, dig("pi-kitchen.meshlet.internal", "MX")).rr == []
    assert answer(r, dig("pi-kitchen.meshlet.internal", "NS")).header.rcode == RCODE.NOTIMP
    any_ = answer(r, dig("pi4.meshlet.internal", "ANY"))
    assert sorted(str(rr.rdata) for rr in any_.rr) == ["100.64.0.1", "fd7a:115c:a1e0::1"]


def test_extra_records_from_dns_config() -> None:
    r = resolver()
    a = answer(r, dig("printer.meshlet.internal"))
    assert [str(rr.rdata) for rr in a.rr] == ["100.64.0.50"]
    assert r.lookup("printer") == ["100.64.0.50"]


def test_bare_single_label_names_of_nodes() -> None:
    """A stub resolver that skips the search list still finds a node by its short name;
    an unknown bare name may be a TLD and goes upstream; `localhost` is never ours."""
    r = resolver()
    a = answer(r, dig("pi-kitchen"))
    assert [(str(rr.rname), str(rr.rdata)) for rr in a.rr] == [("pi-kitchen.", "100.64.0.2")]
    assert r.answer_local(dig("nosuch")) is None
    assert r.answer_local(dig("localhost")) is None


def test_names_outside_the_tailnet_are_not_ours() -> None:
    r = resolver()
    assert r.answer_local(dig("example.com")) is None
    assert r.answer_local(dig("pi-kitchen.example.com")) is None


def test_onion_is_nxdomain() -> None:
    assert (
        answer(resolver(), dig("duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion")).header.rcode
        == 3
    )


def test_quad100_names_itself() -> None:
    r = resolver()
    a = answer(r, dig("magicdns.localhost-tailscale-daemon", "A"))
    assert [str(rr.rdata) for rr in a.rr] == ["100.100.100.100"]
    p = answer(r, dig("100.100.100.100.in-addr.arpa", "PTR"))
    assert [str(rr.rdata) for rr in p.rr] == ["magicdns.localhost-tailscale-daemon."]


def test_magic_dns_off_answers_known_names_but_claims_nothing() -> None:
    """Proxied false: node names still resolve here, unknown names go upstream instead of NXDOMAIN."""
    r = resolver(dict(DNS_CONFIG, Proxied=False))
    assert [str(rr.rdata) for rr in answer(r, dig("pi-kitchen.meshlet.internal")).rr] == ["100.64.0.2"]
    assert r.answer_local(dig("nosuch.meshlet.internal")) is None
    assert r.answer_local(dig("pi-kitchen")) is None
    assert r.magic_dns is False


# -- reverse lookups ------------------------------------------------------------------------------


def test_ptr_for_tailnet_addresses() -> None:
    """`dig -x 100.64.0.2` and `dig -x fd7a:115c:a1e0::2`."""
    r = resolver()
    a = answer(r, dig("2.0.64.100.in-addr.arpa", "PTR"))
    assert [(rr.rtype, str(rr.rdata), rr.ttl) for rr in a.rr] == [
        (QTYPE.PTR, "pi-kitchen.meshlet.internal.", 600)
    ]
    v6 = ".".join(reversed("fd7a115ca1e000000000000000000002")) + ".ip6.arpa"
    a = answer(r, dig(v6, "PTR"))
    assert [str(rr.rdata) for rr in a.rr] == ["pi-kitchen.meshlet.internal."]


def test_ptr_unknown_tailnet_address_is_nxdomain_and_others_go_upstream() -> None:
    r = resolver()
    assert answer(r, dig("99.0.64.100.in-addr.arpa", "PTR")).header.rcode == RCODE.NXDOMAIN
    assert r.answer_local(dig("8.8.8.8.in-addr.arpa", "PTR")) is None
    assert r.answer_local(dig("1.2.0.64.100.in-addr.arpa", "PTR")) is None  # malformed: not ours to judge


def test_reverse_name_parsing() -> None:
    assert reverse_name_ip("4.3.2.1.in-addr.arpa.") == "1.2.3.4"
    assert reverse_name_ip("256.3.2.1.in-addr.arpa.") is None
    assert reverse_name_ip("x.3.2.1.in-addr.arpa.") is None
    assert (
        reverse_name_ip(".".join(reversed("20010db8000000000000000000000001")) + ".ip6.arpa.")
        == "2001:db8::1"
    )
    assert reverse_name_ip("1.ip6.arpa.") is None


# -- names for the CLI ----------------------------------------------------------------------------


def test_lookup_accepts_short_and_full_names() -> None:
    r = resolver()
    want = ["100.64.0.2", "fd7a:115c:a1e0::2"]  # every address, whatever DNS shows
    for name in (
        "pi-kitchen",
        "pi-kitchen.meshlet.internal",
        "PI-KITCHEN.meshlet.internal.",
        " pi-kitchen. ",
    ):
        assert r.lookup(name) == want, name
    assert r.lookup("nosuch") == [] and r.lookup("") == []
    assert r.lookup("fd7a:115c:a1e0::2") == want and r.lookup("100.64.0.99") == []


def test_reverse_and_suffix() -> None:
    r = Resolver()
    assert r.suffix == "" and r.lookup("pi4") == []
    r.set_netmap(netmap())
    assert r.suffix == SUFFIX
    assert r.reverse("100.64.0.2") == "pi-kitchen.meshlet.internal."
    assert r.reverse("fd7a:115c:a1e0:0::2") == "pi-kitchen.meshlet.internal."
    assert r.reverse("100.64.0.99") is None and r.reverse("not an ip") is None
    assert r.search_domains == ["meshlet.internal"]
    assert ("100.64.0.2", "pi-kitchen.meshlet.internal.") in r.host_entries()


def test_suffix_comes_from_the_self_nodes_name() -> None:
    assert suffix_of("pi4.meshlet.internal.") == "meshlet.internal."
    assert suffix_of("host.tail1234.ts.net") == "tail1234.ts.net."
    assert suffix_of("lonely.") == "lonely."
    assert suffix_of("") == ""


# -- malformed and unusual queries ----------------------------------------------------------------


def test_no_header_means_no_answer() -> None:
    """Fewer than 12 bytes carry no ID to answer with: nothing is sent, nothing forwarded."""
    r = resolver()
    for q in (b"", b"\x12", b"\x12\x34\x01\x00\x00\x01"):
        assert r.answer_local(q) is None
        assert asyncio.run(r.resolve(q)) == b""
    assert r.stats["dropped"] == 3 and r.stats["forwarded"] == 0


def test_responses_are_never_answered() -> None:
    """Answering a response could start two resolvers bouncing packets forever."""
    r = resolver()
    reply = DNSRecord.question("example.com").reply().pack()
    assert r.answer_local(reply) is None and asyncio.run(r.resolve(reply)) == b""


def test_garbage_after_the_header_is_formerr() -> None:
    r = resolver()
    for q in (
        struct.pack("!6H", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x3fabc",  # a label running off the end
        struct.pack("!6H", 0xBEEF, 0x0100, 0, 0, 0, 0),  # no question
        struct.pack("!6H", 0xBEEF, 0x0100, 2, 0, 0, 0) + dig("a.b")[12:] * 2,  # two questions
    ):
        out = r.answer_local(q)
        assert out is not None
        qid, flags = struct.unpack("!HH", out[:4])
        assert qid == 0xBEEF and flags & 0x8000 and flags & 0x000F == RCODE.FORMERR and flags & 0x0100


def test_other_opcodes_are_notimp() -> None:
    q = bytearray(dig("pi-kitchen.meshlet.internal"))
    q[2] |= 4 << 3  # NOTIFY
    out = resolver().answer_local(bytes(q))
    assert out is not None and out[3] & 0x0F == RCODE.NOTIMP


def test_edns_is_echoed_and_unknown_versions_get_badvers() -> None:
    r = resolver()
    a = answer(r, dig("pi-kitchen.meshlet.internal"))
    assert [(o.rtype, o.rclass) for o in a.ar] == [(QTYPE.OPT, 1232)]
    assert answer(r, dig("pi-kitchen.meshlet.internal", edns=False)).ar == []
    q = DNSRecord.question("pi-kitchen.meshlet.internal")
    q.add_ar(EDNS0(udp_len=1232, version=1))
    a = answer(r, q.pack())
    assert a.rr == [] and a.ar[0].rtype == QTYPE.OPT and (a.ar[0].ttl >> 24) == 1  # BADVERS = 16 = 1 << 4


def test_big_answers_are_truncated_to_512_bytes_without_edns() -> None:
    """50 addresses for one name: over 512 bytes, so plain DNS gets TC and as many as fit;
    a client advertising 4096 bytes gets them all."""
    extra = [{"Name": "farm.meshlet.internal", "Value": "100.64.1.%d" % i} for i in range(1, 51)]
    r = resolver(dict(DNS_CONFIG, ExtraRecords=extra))
    plain = r.answer_local(dig("farm.meshlet.internal", edns=False))
    assert plain is not None and len(plain) <= 512
    a = DNSRecord.parse(plain)
    assert a.header.tc == 1 and 0 < len(a.rr) < 50
    big = answer(r, dig("farm.meshlet.internal", udp_len=4096))
    assert big.header.tc == 0 and len(big.rr) == 50


# -- forwarding -----------------------------------------------------------------------------------

Handler = Callable[[Any], "list[bytes]"]


class FakeUpstream:
    """A DNS server on 127.0.0.1 (UDP and TCP on the same port) answering with `handler`."""

    def __init__(self, handler: Handler, tcp_handler: "Handler | None" = None) -> None:
        self.handler = handler
        self.tcp_handler = tcp_handler or handler
        self.queries: list[Any] = []
        self.tcp_queries: list[Any] = []
        self.port = 0
        self._transport: Any = None
        self._server: Any = None

    async def start(self) -> "FakeUpstream":
        self._server = await asyncio.start_server(self._serve_tcp, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        upstream = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                upstream._transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                q = DNSRecord.parse(data)
                upstream.queries.append(q)
                for out in upstream.handler(q):
                    upstream._transport.sendto(out, addr)

        await asyncio.get_running_loop().create_datagram_endpoint(Proto, local_addr=("127.0.0.1", self.port))
        return self

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
        q = DNSRecord.parse(await reader.readexactly(n))
        self.tcp_queries.append(q)
        for out in self.tcp_handler(q):
            writer.write(struct.pack("!H", len(out)) + out)
        await writer.drain()
        writer.close()

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        self._transport.close()
        self._server.close()


def a_record(ip: str) -> Handler:
    def handle(q: Any) -> list[bytes]:
        reply = q.reply()
        reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(ip), ttl=30))
        return [reply.pack()]

    return handle


def test_forwards_other_names_to_the_os_resolvers() -> None:
    async def main() -> None:
        up = await FakeUpstream(a_record("192.0.2.1")).start()
        try:
            r = resolver(upstreams=[up.addr])
            out = DNSRecord.parse(await r.resolve(dig("example.com", qid=77)))
            assert out.header.id == 77 and [str(rr.rdata) for rr in out.rr] == ["192.0.2.1"]
            assert str(up.queries[0].q.qname) == "example.com."
            assert r.stats == {"queries": 1, "local_answers": 0, "forwarded": 1, "failures": 0, "dropped": 0}
            # tailnet names never leave the host
            local = DNSRecord.parse(await r.resolve(dig("pi-kitchen.meshlet.internal")))
            assert [str(rr.rdata) for rr in local.rr] == ["100.64.0.2"] and len(up.queries) == 1
        finally:
            up.close()

    run(main)


def test_dns_config_resolvers_and_split_routes_win_over_the_os_resolvers() -> None:
    async def main() -> None:
        os_up = await FakeUpstream(a_record("192.0.2.1")).start()
        default = await FakeUpstream(a_record("192.0.2.2")).start()
        corp = await FakeUpstream(a_record("192.0.2.3")).start()
        try:
            cfg = dict(
                DNS_CONFIG,
                Resolvers=[{"Addr": "127.0.0.1:%d" % default.port}],
                Routes={"corp.example.": [{"Addr": "127.0.0.1:%d" % corp.port}], "lab.example": None},
            )
            r = resolver(cfg, upstreams=[os_up.addr])
            assert r.has_default_resolvers

            async def ip_of(name: str) -> list[str]:
                return [str(rr.rdata) for rr in DNSRecord.parse(await r.resolve(dig(name))).rr]

            assert await ip_of("example.com") == ["192.0.2.2"]
            assert await ip_of("wiki.corp.example") == ["192.0.2.3"]
            nx = DNSRecord.parse(await r.resolve(dig("x.lab.example")))  # a route without resolvers: local
            assert nx.header.rcode == RCODE.NXDOMAIN and os_up.queries == []
        finally:
            for u in (os_up, default, corp):
                u.close()

    run(main)


def test_silent_upstream_gives_servfail() -> None:
    async def main() -> None:
        up = await FakeUpstream(lambda q: []).start()
        try:
            r = resolver(upstreams=[up.addr], forward_timeout_s=0.3)
            out = DNSRecord.parse(await r.resolve(dig("example.com", qid=9)))
            assert (
                out.header.id == 9
                and out.header.rcode == RCODE.SERVFAIL
                and str(out.q.qname) == "example.com."
            )
            assert r.stats["failures"] == 1
        finally:
            up.close()

    run(main)


def test_never_forwards_to_itself() -> None:
    """100.100.100.100 as an upstream would send every unknown name round in a loop."""
    assert parse_upstream("100.100.100.100") is None and parse_upstream("[fd7a:115c:a1e0::53]:53") is None
    assert parse_upstream("1.1.1.1") == ("1.1.1.1", 53) and parse_upstream("[2606:4700::1111]:5353") == (
        "2606:4700::1111",
        5353,
    )
    assert parse_upstream("https://dns.example/dns-query") is None

    async def main() -> None:
        cfg = dict(DNS_CONFIG, Resolvers=[{"Addr": "100.100.100.100"}])
        r = resolver(cfg, upstreams=[("100.100.100.100", 53)], forward_timeout_s=5)
        out = DNSRecord.parse(await r.resolve(dig("example.com")))
        assert out.header.rcode == RCODE.SERVFAIL and r.stats["failures"] == 1

    run(main)


def test_a_dead_upstream_is_skipped_for_the_next_one() -> None:
    async def main() -> None:
        good = await FakeUpstream(a_record("192.0.2.7")).start()
        silent = await FakeUpstream(lambda q: []).start()
        try:
            r = resolver(upstreams=[silent.addr, good.addr], forward_timeout_s=5)
            out = DNSRecord.parse(await r.resolve(dig("example.com")))
            assert [str(rr.rdata) for rr in out.rr] == ["192.0.2.7"] and len(silent.queries) == 1
        finally:
            good.close()
            silent.close()

    run(main)


def test_an_upstream_with_nothing_listening_fails_over_at_once() -> None:
    """ICMP port unreachable ends that attempt; the next upstream answers."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()
    probe.close()

    async def main() -> None:
        good = await FakeUpstream(a_record("192.0.2.8")).start()
        try:
            r = resolver(upstreams=[closed, good.addr], forward_timeout_s=5)
            out = DNSRecord.parse(await r.resolve(dig("example.com")))
            assert [str(rr.rdata) for rr in out.rr] == ["192.0.2.8"] and r.stats["failures"] == 0
        finally:
            good.close()

    run(main)


def test_replies_with_the_wrong_id_are_ignored() -> None:
    def spoof_then_answer(q: Any) -> list[bytes]:
        fake = q.reply()
        fake.header.id = (q.header.id + 1) & 0xFFFF
        fake.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("203.0.113.66")))
        return [fake.pack()] + a_record("192.0.2.1")(q)

    async def main() -> None:
        up = await FakeUpstream(spoof_then_answer).start()
        try:
            r = resolver(upstreams=[up.addr])
            out = DNSRecord.parse(await r.resolve(dig("example.com")))
            assert [str(rr.rdata) for rr in out.rr] == ["192.0.2.1"]
        finally:
            up.close()

    run(main)


def test_truncated_upstream_reply_is_retried_over_tcp() -> None:
    """The upstream says TC over UDP; the full answer comes over TCP and is cut to what the
    client can take: all of it for an EDNS client with room, 512 bytes with TC for plain DNS."""

    def truncated(q: Any) -> list[bytes]:
        reply = q.reply()
        reply.header.tc = 1
        return [reply.pack()]

    def full(q: Any) -> list[bytes]:
        reply = q.reply()
        for i in range(30):
            reply.add_answer(RR(q.q.qname, QTYPE.TXT, rdata=TXT("record %02d " % i + "x" * 40), ttl=30))
        return [reply.pack()]

    async def main() -> None:
        up = await FakeUpstream(truncated, full).start()
        try:
            r = resolver(upstreams=[up.addr])
            big = DNSRecord.parse(await r.resolve(dig("big.example", "TXT", udp_len=4096)))
            assert big.header.tc == 0 and len(big.rr) == 30 and len(up.tcp_queries) == 1
            plain_bytes = await r.resolve(dig("big.example", "TXT", edns=False))
            plain = DNSRecord.parse(plain_bytes)
            assert len(plain_bytes) <= 512 and plain.header.tc == 1 and 0 < len(plain.rr) < 30
            over_tcp = DNSRecord.parse(await r.resolve(dig("big.example", "TXT", edns=False), tcp=True))
            assert over_tcp.header.tc == 0 and len(over_tcp.rr) == 30
        finally:
            up.close()

    run(main)


def test_aaaa_is_forwarded_like_any_other_type() -> None:
    def handle(q: Any) -> list[bytes]:
        reply = q.reply()
        reply.add_answer(RR(q.q.qname, QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=30))
        return [reply.pack()]

    async def main() -> None:
        up = await FakeUpstream(handle).start()
        try:
            r = resolver(upstreams=[up.addr])
            out = DNSRecord.parse(await r.resolve(dig("example.com", "AAAA")))
            assert [str(rr.rdata) for rr in out.rr] == ["2001:db8::1"]
        finally:
            up.close()

    run(main)


@pytest.mark.parametrize("name", ["pi-kitchen.meshlet.internal", "nosuch.meshlet.internal"])
def test_resolve_answers_tailnet_names_without_an_upstream(name: str) -> None:
    r = resolver()
    out = asyncio.run(r.resolve(dig(name)))
    assert DNSRecord.parse(out).header.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN)
    assert r.stats["local_answers"] == 1 and r.stats["forwarded"] == 0
