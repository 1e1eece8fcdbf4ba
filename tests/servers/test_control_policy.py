"""Policy files: HuJSON quirks, alias expansion, compiled packet filters, peer visibility, errors with positions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshlet_control import hujson, policy
from meshlet_control.policy import ALLOW_ALL, PolicyError, compile_policy, parse_policy


@dataclass
class N:
    id: int
    user_id: int
    ipv4: str
    ipv6: str
    tags: list[str] = field(default_factory=list)


@dataclass
class U:
    id: int
    name: str


USERS = [U(1, "alice"), U(2, "bob")]
LAPTOP = N(1, 1, "100.64.0.1", "fd7a:115c:a1e0::1")
DESKTOP = N(2, 1, "100.64.0.2", "fd7a:115c:a1e0::2")
PHONE = N(3, 2, "100.64.0.3", "fd7a:115c:a1e0::3")
SERVER = N(4, 1, "100.64.0.4", "fd7a:115c:a1e0::4", ["tag:server"])
NAS = N(5, 2, "100.64.0.5", "fd7a:115c:a1e0::5", ["tag:nas"])
NODES = [LAPTOP, DESKTOP, PHONE, SERVER, NAS]

BASE = """{
  // who is who
  "groups": {"group:admins": ["alice@"], "group:all": ["alice@", "bob@example.com"]},
  "tagOwners": {"tag:server": ["group:admins"], "tag:nas": ["tag:server"]},
  "hosts": {"nas": "100.64.0.5", "tailnet": "100.64.0.0/10"},
  "acls": [%s],
}"""


def compiled(rules: str, nodes: list[N] = NODES) -> policy.Compiled:
    return compile_policy(parse_policy(BASE % rules), nodes, USERS)


def ports(ip: str, first: int, last: int | None = None) -> dict[str, Any]:
    return {"IP": ip, "Ports": {"First": first, "Last": first if last is None else last}}


def ips(*nodes: N) -> list[str]:
    return [n.ipv4 for n in nodes] + [n.ipv6 for n in nodes]


def fails(text: str, line: int, column: int, *words: str) -> PolicyError:
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert (e.value.line, e.value.column) == (line, column), str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)
    return e.value


# -- HuJSON ---------------------------------------------------------------------------


def test_hujson_comments_and_trailing_commas() -> None:
    text = """// a policy
{
  "a": [1, 2, /* two */ 3,],   // trailing comma in an array
  "b": {"x": "// not a comment", "y": "/* nor this */",},
  /* a block
     over lines */ "c": -1.5e3,
}
"""
    doc = hujson.parse(text)
    want = {"a": [1, 2, 3], "b": {"x": "// not a comment", "y": "/* nor this */"}, "c": -1500.0}
    assert doc.value == want
    std = hujson.standardize(text)
    assert json.loads(std) == want and len(std) == len(text) and std.count("\n") == text.count("\n")
    assert doc.position(("b", "y")) == (4, 39) and doc.position(("b", "y"), key=True) == (4, 34)
    assert doc.position(("c",)) == (6, 25)


@pytest.mark.parametrize(
    "text,line,column,words",
    [
        ("", 1, 1, "empty"),
        ("// only a comment\n", 2, 1, "empty"),
        ("[,]", 1, 2, "','"),
        ("{,}", 1, 2, "quoted key"),
        ('{"a": 1 "b": 2}', 1, 9, "expected ','"),
        ('{"a": 1,,}', 1, 9, "quoted key"),
        ("[1, 2", 1, 6, "never closed"),
        ("{\n  'a': 1}", 2, 3, "quoted key"),
        ('{"a": tru}', 1, 7, "quote the text"),
        ('{"a": NaN}', 1, 7, "quote the text"),
        ('{"a": 01}', 1, 8, "expected ','"),
        ('{"a": "x\ny"}', 1, 9, "control character"),
        ('{"a": "\\q"}', 1, 8, "bad escape"),
        ('{"a": "x}', 1, 7, "never closed"),
        ("{} {}", 1, 4, "after the end"),
        ("/* open", 1, 1, "never closed"),
        ("[" * 100, 1, 66, "nested"),
    ],
)
def test_hujson_errors_have_positions(text: str, line: int, column: int, words: str) -> None:
    with pytest.raises(hujson.HujsonError) as e:
        hujson.parse(text)
    assert (e.value.line, e.value.column) == (line, column), str(e.value)
    assert words in str(e.value)


# -- checking ---------------------------------------------------------------------------


def test_policy_errors_point_at_the_mistake() -> None:
    fails('{"acls": [], "tagowners": {}}', 1, 14, "unknown section 'tagowners'", "did you mean 'tagOwners'")
    fails('{"grants": []}', 1, 2, "grants are not supported", "acls")
    fails(
        '{\n "acls": [\n  {"action": "accept", "src": ["group:ops"], "dst": ["*:*"]}]}',
        3,
        32,
        "group 'group:ops' is not defined",
        "groups",
    )
    fails('{"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:web:80"]}]}', 1, 54, "tagOwners")
    fails(
        '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:http"]}]}', 1, 54, "bad ports", "8000-8099"
    )
    fails('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:70000"]}]}', 1, 54, "bad ports")
    fails('{"acls": [{"action": "accept", "src": ["*"], "dst": ["100.64.0.1"]}]}', 1, 54, "has no ports")
    fails(
        '{"acls": [{"action": "accept", "src": ["bob"], "dst": ["*:*"]}]}',
        1,
        40,
        "unknown name 'bob'",
        "name@",
    )
    fails(
        '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "tcpp"}]}',
        1,
        71,
        "unknown protocol",
    )
    fails(
        '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"], "proto": "icmp"}]}',
        1,
        54,
        "this protocol has no ports",
    )
    fails('{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}', 1, 22, 'must be "accept"')
    fails(
        '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "srcPosture": []}]}',
        1,
        62,
        "unknown field 'srcPosture'",
    )
    fails(
        '{"acls": [{"action": "accept", "src": ["autogroup:self"], "dst": ["*:*"]}]}',
        1,
        40,
        "only be a destination",
    )
    fails(
        '{"acls": [{"action": "accept", "src": ["*"], "dst": ["autogroup:self:*"]}]}',
        1,
        40,
        "cannot be a source",
    )
    fails(
        '{"acls": [{"action": "accept", "src": ["*"], "dst": ["autogroup:internet:*"]}]}', 1, 54, "exit nodes"
    )
    fails('{"hosts": {"lan": "192.168.1.1/24"}}', 1, 19, "host bits", "192.168.1.0/24")
    fails('{"hosts": {"lan": "192.168.1"}}', 1, 19, "not an IP address")
    fails('{"groups": {"group:a": ["group:b"]}}', 1, 25, "only list users")
    fails('{"groups": {"eng": ["alice@"]}}', 1, 13, "must start with group:")
    fails('{"acls": {}}', 1, 10, "must be a list")
    fails("[]", 1, 1, "a policy is a JSON object")
    fails('{"acls": [}', 1, 11, "unexpected character")


def test_sections_meshlet_ignores_are_warnings() -> None:
    p = parse_policy('{"ssh": [{"action": "accept"}], "tests": [], "acls": []}')
    assert p.warnings == [
        "line 1: 'ssh' is not supported by meshlet and is ignored",
        "line 1: 'tests' is not supported by meshlet and is ignored",
    ]


def test_legacy_users_and_ports_fields() -> None:
    p = parse_policy('{"acls": [{"action": "accept", "users": ["*"], "ports": ["*:22"]}]}')
    assert p.acls is not None and p.acls[0].src[0].kind == "any" and p.acls[0].dst[0].ports == [(22, 22)]


# -- compiling --------------------------------------------------------------------------


def test_no_policy_and_no_acls_allow_everything_but_an_empty_list_allows_nothing() -> None:
    for c in (
        compile_policy(None, NODES, USERS),
        compile_policy(parse_policy('{"groups": {}}'), NODES, USERS),
    ):
        assert c.allow_all and c.filter_for(LAPTOP) == ALLOW_ALL and c.peers_for(1) == {2, 3, 4, 5}
    out = compile_policy(None, NODES, USERS).filter_for(LAPTOP)
    out[0]["SrcIPs"].append("x")  # callers get their own copy
    assert ALLOW_ALL[0]["SrcIPs"] == ["*"]
    assert 'no "acls" section' in parse_policy("{}").warnings[0]
    deny = compiled("")
    assert [deny.filter_for(n) for n in NODES] == [[]] * 5 and deny.peers_for(1) == set()


def test_groups_users_and_tags_expand_to_node_addresses() -> None:
    c = compiled('{"action": "accept", "src": ["group:admins"], "dst": ["tag:server:22,443", "tag:nas:*"]}')
    assert c.filter_for(SERVER) == [
        {
            "SrcIPs": ips(LAPTOP, DESKTOP),  # alice's untagged nodes; her tagged server is not "alice@"
            "DstPorts": [
                ports(SERVER.ipv4, 22),
                ports(SERVER.ipv4, 443),
                ports(SERVER.ipv6, 22),
                ports(SERVER.ipv6, 443),
            ],
        }
    ]
    assert c.filter_for(NAS)[0]["DstPorts"] == [ports(NAS.ipv4, 0, 65535), ports(NAS.ipv6, 0, 65535)]
    assert c.filter_for(LAPTOP) == [] and c.filter_for(PHONE) == []
    assert c.peers_for(LAPTOP.id) == {SERVER.id, NAS.id} and c.peers_for(SERVER.id) == {LAPTOP.id, DESKTOP.id}
    assert c.peers_for(PHONE.id) == set() and not c.may_see(PHONE.id, SERVER.id)
    assert c.can_access(LAPTOP.id, SERVER.id) and not c.can_access(SERVER.id, LAPTOP.id)
    assert c.may_see(SERVER.id, LAPTOP.id)  # either direction is enough to be a peer


def test_user_aliases_and_wildcards() -> None:
    c = compiled('{"action": "accept", "src": ["bob@"], "dst": ["*:80"]}')
    assert c.filter_for(LAPTOP) == [{"SrcIPs": ips(PHONE), "DstPorts": [ports("*", 80)]}]
    assert c.filter_for(PHONE) == c.filter_for(LAPTOP)  # "*" is not cut down per node
    assert c.peers_for(PHONE.id) == {1, 2, 4, 5} and c.peers_for(LAPTOP.id) == {PHONE.id}
    c = compiled('{"action": "accept", "src": ["*"], "dst": ["alice@:22"]}')
    assert c.filter_for(LAPTOP) == [
        {"SrcIPs": ["*"], "DstPorts": [ports(LAPTOP.ipv4, 22), ports(LAPTOP.ipv6, 22)]}
    ]
    assert c.filter_for(SERVER) == []


def test_hosts_and_prefixes_keep_their_literal_form() -> None:
    c = compiled(
        '{"action": "accept", "src": ["group:all"], "dst": ["nas:445", "tailnet:53", "[fd7a:115c:a1e0::3]:8080"]}'
    )
    assert c.filter_for(NAS)[0]["DstPorts"] == [ports("100.64.0.5", 445), ports("100.64.0.0/10", 53)]
    assert c.filter_for(PHONE)[0]["DstPorts"] == [
        ports("100.64.0.0/10", 53),
        ports("fd7a:115c:a1e0::3", 8080),
    ]
    assert c.filter_for(NAS)[0]["SrcIPs"] == ips(LAPTOP, DESKTOP, PHONE)
    c = compiled('{"action": "accept", "src": ["nas", "192.168.0.0/16"], "dst": ["alice@:*"]}')
    assert c.filter_for(LAPTOP)[0]["SrcIPs"] == ["100.64.0.5", "192.168.0.0/16"]
    assert c.peers_for(NAS.id) == {LAPTOP.id, DESKTOP.id}  # the node behind the host name counts


def test_protocols() -> None:
    c = compiled(
        '{"action": "accept", "src": ["*"], "dst": ["*:53"], "proto": "udp"}, '
        '{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "icmp"}, '
        '{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "47"}'
    )
    assert [r["IPProto"] for r in c.filter_for(LAPTOP)] == [[17], [1, 58], [47]]


def test_autogroups() -> None:
    c = compiled('{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}')
    alice_ips = ips(LAPTOP, DESKTOP)
    assert c.filter_for(LAPTOP) == [
        {"SrcIPs": alice_ips, "DstPorts": [ports(ip, 0, 65535) for ip in ips(LAPTOP)]}
    ]
    assert c.filter_for(PHONE) == [
        {"SrcIPs": ips(PHONE), "DstPorts": [ports(ip, 0, 65535) for ip in ips(PHONE)]}
    ]
    assert c.filter_for(SERVER) == []  # tagged nodes have no "self"
    assert c.peers_for(LAPTOP.id) == {DESKTOP.id} and c.peers_for(PHONE.id) == set()
    assert c.can_access(LAPTOP.id, DESKTOP.id) and not c.can_access(LAPTOP.id, PHONE.id)
    c = compiled('{"action": "accept", "src": ["autogroup:tagged"], "dst": ["autogroup:member:443"]}')
    assert c.filter_for(PHONE)[0]["SrcIPs"] == ips(SERVER, NAS) and c.filter_for(NAS) == []


def test_unknown_users_match_nothing_and_are_reported() -> None:
    c = compiled('{"action": "accept", "src": ["carol@"], "dst": ["*:*"]}')
    assert c.filter_for(LAPTOP) == [] and any("'carol' does not exist" in w for w in c.warnings)


def test_nodes_without_addresses_are_harmless() -> None:
    pending = N(9, 1, "", "")
    c = compile_policy(
        parse_policy(BASE % '{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}'),
        NODES + [pending],
        USERS,
    )
    assert c.filter_for(pending) == [] and "" not in c.filter_for(LAPTOP)[0]["SrcIPs"]
