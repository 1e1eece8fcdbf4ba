"""Properties of the MagicDNS resolver: whatever arrives on 100.100.100.100:53, or in DNSConfig,
the answer is bytes or nothing, never an exception."""

import asyncio
import string
from typing import Any

from dnslib import EDNS0, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from meshlet.control.netmap import NetMap
from meshlet_agent.dns import Resolver
from meshlet_agent.dns.names import parse_upstream, reverse_name_ip
from meshlet_testing.garbage import mutations

SELF = {"ID": 1, "Key": "nodekey:" + "11" * 32, "Name": "pi4.meshlet.internal.",
        "Addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]}  # fmt: skip
PEER = {
    "ID": 2,
    "Key": "nodekey:" + "22" * 32,
    "Name": "pi-kitchen.meshlet.internal.",
    "Addresses": ["100.64.0.2/32"],
}
CONFIG = {"Domains": ["meshlet.internal"], "Proxied": True,
          "ExtraRecords": [{"Name": "printer.meshlet.internal", "Value": "100.64.0.50"}]}  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
dns_configs = st.dictionaries(
    st.sampled_from(
        ["Resolvers", "Routes", "Domains", "Proxied", "ExtraRecords", "FallbackResolvers", "Other"]
    ),
    json_values,
    max_size=6,
)
labels = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=20)
names = st.lists(labels, min_size=1, max_size=4).map(".".join) | st.sampled_from(
    [
        "pi-kitchen.meshlet.internal",
        "PI4.meshlet.internal",
        "pi-kitchen",
        "2.0.64.100.in-addr.arpa",
        "x.onion",
    ]
)
qtypes = st.sampled_from(["A", "AAAA", "PTR", "TXT", "ANY", "NS", "SOA", "MX", "SRV", "CNAME"])


def make_resolver(config: "dict[str, Any]") -> Resolver:
    nm = NetMap()
    nm.apply({"Node": SELF, "Peers": [PEER], "DNSConfig": config})
    r = Resolver(forward_timeout_s=0.01)
    r.set_netmap(nm)
    return r


RESOLVER = make_resolver(CONFIG)


def check_answer(query: bytes, out: "bytes | None") -> None:
    assert out is None or isinstance(out, bytes)
    if out:
        assert len(out) >= 12 and out[:2] == query[:2] and out[2] & 0x80  # our ID, and a response


@given(st.binary(max_size=600))
def test_any_bytes_give_bytes_or_none(data: bytes) -> None:
    check_answer(data, RESOLVER.answer_local(data))


@given(names, qtypes, st.booleans(), st.integers(0, 2000), st.integers(0, 0xFFFF))
def test_mutated_queries_give_bytes_or_none(name: str, qtype: str, edns: bool, pos: int, value: int) -> None:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    data = mutations(bytes(q.pack()), pos, value)
    check_answer(data, RESOLVER.answer_local(data))


@given(names, qtypes, st.booleans())
def test_well_formed_queries_get_a_readable_answer_or_go_upstream(name: str, qtype: str, edns: bool) -> None:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    out = RESOLVER.answer_local(bytes(q.pack()))
    if out is not None:
        a = DNSRecord.parse(out)
        assert a.header.id == q.header.id and a.q == q.q and len(out) <= (1232 if edns else 512)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=100))
def test_resolve_never_raises(data: bytes) -> None:
    """No upstream at all: local answers, SERVFAIL, or b"" (nothing to send)."""
    out = asyncio.run(RESOLVER.resolve(data))
    check_answer(data, out)


@given(dns_configs, names, qtypes)
def test_any_dns_config_builds_a_table(config: "dict[str, Any]", name: str, qtype: str) -> None:
    """DNSConfig is raw JSON from control: any shape must leave a working resolver."""
    r = make_resolver(config)
    query = bytes(DNSRecord.question(name, qtype).pack())
    check_answer(query, r.answer_local(query))
    r.lookup(name)
    assert isinstance(r.suffix, str)


@given(st.text(max_size=80))
def test_text_parsers_never_raise(text: str) -> None:
    reverse_name_ip(text)
    reverse_name_ip(text + ".in-addr.arpa.")
    reverse_name_ip(text + ".ip6.arpa.")
    parse_upstream(text)
    RESOLVER.lookup(text)
    RESOLVER.reverse(text)
