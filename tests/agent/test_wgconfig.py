"""wg-quick config parsing (agent/meshlet_agent/wgconfig.py): good files, and every error naming its fix."""

import pytest

from meshlet.key import NodePrivate
from meshlet_agent.wgconfig import DEFAULT_MTU, ConfigError, Endpoint, format_prefix, parse_config

from meshlet_testing.rand import FakeRandom

_rand = FakeRandom(7)
PRIV = NodePrivate.generate(_rand)
PEER = NodePrivate.generate(_rand).public()
PEER2 = NodePrivate.generate(_rand).public()
PSK = "ZmFrZS1wcmUtc2hhcmVkLWtleS0tMzItYnl0ZXMhISE="  # 32 bytes of ASCII, base64


def iface(*extra: str) -> str:
    return "\n".join(["[Interface]", "PrivateKey = " + PRIV.to_base64(), *extra]) + "\n"


def peer(*extra: str, key: str | None = None) -> str:
    return "\n".join(["[Peer]", "PublicKey = " + (key or PEER.to_base64()), *extra]) + "\n"


def test_full_config() -> None:
    text = (
        "# a comment line\n"
        + iface(
            "ListenPort = 51820",
            "Address = 100.64.0.1/32, fd7a:115c:a1e0::1/128  # trailing comment",
            "Address = 10.9.8.7/24",
            "MTU = 1380",
        )
        + "\n"
        + peer(
            "PresharedKey = " + PSK,
            "Endpoint = 192.0.2.1:51821",
            "AllowedIPs = 100.64.0.2/32, 10.0.0.77/8",
            "AllowedIPs = ::/0",
            "PersistentKeepalive = 25",
        )
        + peer("Endpoint = [2001:DB8::1]:7", key=PEER2.to_base64())
    )
    cfg = parse_config(text, "wg0.conf")
    i = cfg.interface
    assert i.private_key == PRIV
    assert i.listen_port == 51820
    assert [format_prefix(a) for a in i.addresses] == [
        "100.64.0.1/32",
        "fd7a:115c:a1e0::1/128",
        "10.9.8.7/24",
    ]
    assert cfg.mtu == 1380
    assert len(cfg.peers) == 2
    p = cfg.peers[0]
    assert p.public_key == PEER
    assert p.preshared_key is not None and len(p.preshared_key) == 32
    assert p.endpoint == Endpoint("192.0.2.1", 51821, bytes([192, 0, 2, 1]))
    # AllowedIPs are networks: host bits are cleared, as wg does.
    assert [format_prefix(a) for a in p.allowed_ips] == ["100.64.0.2/32", "10.0.0.0/8", "::/0"]
    assert p.persistent_keepalive_s == 25
    q = cfg.peers[1]
    assert q.endpoint is not None and q.endpoint.host == "2001:db8::1" and q.endpoint.port == 7
    assert str(q.endpoint) == "[2001:db8::1]:7"
    assert q.allowed_ips == [] and q.persistent_keepalive_s == 0 and q.preshared_key is None
    assert cfg.notes == []


def test_minimal_and_defaults() -> None:
    cfg = parse_config(iface())
    assert cfg.interface.listen_port is None and cfg.interface.addresses == []
    assert cfg.mtu == DEFAULT_MTU and cfg.peers == []


def test_case_insensitive_and_whitespace() -> None:
    text = (
        "  [interface]\n\tprivatekey=%s\nlistenport =  0\n[PEER]\npublickey= %s\nallowedips=100.64.0.2\n"
        % (
            PRIV.to_base64(),
            PEER.to_base64(),
        )
    )
    cfg = parse_config(text)
    assert cfg.interface.listen_port == 0
    assert [format_prefix(a) for a in cfg.peers[0].allowed_ips] == ["100.64.0.2/32"]


def test_hostname_endpoint_is_left_for_the_shell() -> None:
    cfg = parse_config(iface() + peer("Endpoint = vpn.example.com:51820"))
    assert cfg.peers[0].endpoint == Endpoint("vpn.example.com", 51820, None)


def test_keepalive_off() -> None:
    assert parse_config(iface() + peer("PersistentKeepalive = off")).peers[0].persistent_keepalive_s == 0


def test_dns_is_ignored_with_a_note() -> None:
    cfg = parse_config(iface("DNS = 1.1.1.1, example.com"), "wg0.conf")
    assert cfg.notes == [
        "wg0.conf: DNS = 1.1.1.1, example.com is ignored: meshlet does not change the system resolver"
    ]


def test_crlf_line_endings() -> None:
    cfg = parse_config(iface("ListenPort = 5").replace("\n", "\r\n"))
    assert cfg.interface.listen_port == 5


# (text, line, key, words in the problem, words in the fix)
ERRORS = [
    ("[Interface]\nPrivateKey = abc\n", 2, "PrivateKey", "not a base64 WireGuard key", "wg genkey"),
    (iface("PrivateKey = " + PRIV.to_base64()), 3, "PrivateKey", "set twice", "keep only one"),
    ("PrivateKey = x\n", 1, "PrivateKey", "before any section", "[Interface]"),
    ("[Interface]\n", 1, "[Interface]", "has no PrivateKey", "wg genkey"),
    ("", 0, "[Interface]", "missing", "start the file"),
    (peer(), 0, "[Interface]", "missing", "start the file"),
    (iface() + "[Interface]\n", 3, "[Interface]", "second time", "merge"),
    (iface() + "[Peers]\n", 3, "[Peers]", "not a known section", "[Peer]"),
    (iface("Foo = 1"), 3, "Foo", "not a known [Interface] setting", "check the spelling"),
    (iface() + peer("Bar = 1"), 5, "Bar", "not a known [Peer] setting", "check the spelling"),
    (iface("just words"), 3, "'just words'", "not a `Key = Value` line", "Key = Value"),
    (iface("ListenPort ="), 3, "ListenPort", "has no value", "delete the line"),
    (iface("ListenPort = 70000"), 3, "ListenPort", "0 to 65535", "51820"),
    (iface("ListenPort = -1"), 3, "ListenPort", "whole number", "51820"),
    (iface("MTU = 100"), 3, "MTU", "576 to 65535", "1420"),
    (iface("Address = 100.64.0.1/33"), 3, "Address", "prefix length", "write it like"),
    (iface("Address = 100.64.0.256"), 3, "Address", "not an IPv4 or IPv6 address", "write it like"),
    (iface("Address = 100.64.0.1,,10.0.0.1"), 3, "Address", "empty item", "single commas"),
    (iface("Address = fd00::1/64", "MTU = 1000"), 4, "MTU", "below the 1280", "raise MTU"),
    (iface("PostUp = iptables -A x"), 3, "PostUp", "wg-quick setting", "run the command yourself"),
    (iface("Table = off"), 3, "Table", "wg-quick setting", "delete the line"),
    (iface("SaveConfig = true"), 3, "SaveConfig", "wg-quick setting", "delete the line"),
    (iface("FwMark = 0x1"), 3, "FwMark", "wg-quick setting", "delete the line"),
    (iface() + "[Peer]\nEndpoint = 1.2.3.4:5\n", 3, "[Peer]", "has no PublicKey", "wg pubkey"),
    (iface() + peer(key="not-a-key"), 4, "PublicKey", "not a base64 WireGuard key", "wg pubkey"),
    (iface() + peer() + peer(), 5, "[Peer]", "repeats the PublicKey of the peer on line 3", "merge"),
    (iface() + peer(key=PRIV.public().to_base64()), 3, "[Peer]", "own public key", "other machine"),
    (iface() + peer("PresharedKey = short="), 5, "PresharedKey", "not a base64 key", "wg genpsk"),
    (iface() + peer("Endpoint = 1.2.3.4"), 5, "Endpoint", "lacks a port", "write it as"),
    (iface() + peer("Endpoint = 1.2.3.4:0"), 5, "Endpoint", "port '0'", "write it as"),
    (iface() + peer("Endpoint = 1.2.3.4:http"), 5, "Endpoint", "port 'http'", "write it as"),
    (iface() + peer("Endpoint = 2001:db8::1:51820"), 5, "Endpoint", "needs brackets", "[2001:db8::1]:51820"),
    (iface() + peer("Endpoint = [2001:db8::1]51820"), 5, "Endpoint", "lacks `]:port`", "write it as"),
    (
        iface() + peer("Endpoint = [nonsense]:1"),
        5,
        "Endpoint",
        "not an IPv4 or IPv6 address",
        "[2001:db8::1]",
    ),
    (
        iface() + peer("Endpoint = bad_host!:1"),
        5,
        "Endpoint",
        "neither an address nor a host name",
        "write it",
    ),
    (iface() + peer("AllowedIPs = 10.0.0.0/99"), 5, "AllowedIPs", "prefix length", "write it like"),
    (iface() + peer("PersistentKeepalive = often"), 5, "PersistentKeepalive", "whole number", "off"),
]


@pytest.mark.parametrize("text,line,key,problem,fix", ERRORS, ids=[e[2] + ":" + e[3] for e in ERRORS])
def test_error_names_place_key_problem_and_fix(
    text: str, line: int, key: str, problem: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "wg0.conf")
    e = info.value
    assert (e.source, e.line, e.key) == ("wg0.conf", line, key)
    assert problem in e.problem
    assert fix in e.fix
    where = "wg0.conf:%d: " % line if line else "wg0.conf: "
    assert str(e) == "%s%s %s; %s" % (where, key, e.problem, e.fix)


def test_error_message_example_from_the_brief() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("# wg0\n\n[Interface]\nPrivateKey = nope\n".replace("\n\n[", "\n["), "wg0.conf")
    assert str(info.value) == (
        "wg0.conf:3: PrivateKey is not a base64 WireGuard key (44 characters ending in '='); "
        "generate one with `wg genkey` (or `meshlet wg genkey`)"
    )


def test_private_key_never_in_messages() -> None:
    secret = PRIV.to_base64()
    with pytest.raises(ConfigError) as info:
        parse_config(iface("Nope = 1"), "wg0.conf")
    assert secret not in str(info.value)
    assert secret not in repr(parse_config(iface()))
