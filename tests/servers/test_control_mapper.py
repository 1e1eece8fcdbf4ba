"""mapper: fixed records in, golden MapResponse dicts out (control.md §7.4, §7.5, §8, §9; names.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from meshlet.key import DiscoPublic, MachinePublic, NodePublic
from meshlet_control import mapper, tailcfg

T0 = 1764496800000  # 2025-11-30T10:00:00Z
NK1 = NodePublic(bytes(range(32)))
NK2 = NodePublic(bytes(range(1, 33)))
MK1 = MachinePublic(bytes([0xAA] * 32))
MK2 = MachinePublic(bytes([0xBB] * 32))
DK2 = DiscoPublic(bytes([0xDD] * 32))


@dataclass
class Rec:
    """A stand-in with state.Node's fields; the mapper only reads attributes."""

    id: int
    stable_id: str
    user_id: int
    hostname: str
    fqdn: str
    machine_key: Any
    node_key: Any
    disco_key: Any
    ipv4: str
    ipv6: str
    endpoints: list[str] = field(default_factory=list)
    home_derp: int = 0
    hostinfo: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    ephemeral: bool = False
    created_ms: int = T0
    last_seen_ms: int = 0
    online: bool = False
    expiry_ms: int = 0
    authorized: bool = True


@dataclass
class UserRec:
    id: int
    name: str
    display_name: str
    created_ms: int = T0


SELF = Rec(
    2, "2", 1, "myapp", "myapp.meshlet.internal.", MK2, NK2, DK2, "100.64.0.2", "fd7a:115c:a1e0::2",
    endpoints=["192.168.1.20:41641"], home_derp=900,
    hostinfo={"Hostname": "myapp", "OS": "linux", "Package": "tsnet", "NetInfo": {"PreferredDERP": 900},
              "BackendLogID": "secret"},
)  # fmt: skip
PEER = Rec(
    1, "1", 1, "pi4", "pi4.meshlet.internal.", MK1, NK1, None, "100.64.0.1", "fd7a:115c:a1e0::1",
    endpoints=["198.51.100.4:41641"], home_derp=900, online=True, created_ms=T0 - 3_600_000,
    hostinfo={"Hostname": "pi4", "OS": "linux", "NetInfo": {"PreferredDERP": 900}, "PushDeviceToken": "x"},
)  # fmt: skip
DERP_MAP = {
    "Regions": {
        "900": {
            "RegionID": 900,
            "RegionCode": "mlt",
            "RegionName": "lab",
            "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "derp.lab.example", "DERPPort": 443}],
        }
    }
}
CFG = mapper.MapperConfig("meshlet.internal", DERP_MAP, ["1.1.1.1"])

GOLDEN_PEER = {
    "ID": 1,
    "StableID": "1",
    "Name": "pi4.meshlet.internal.",
    "User": 1,
    "Key": "nodekey:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "KeyExpiry": "0001-01-01T00:00:00Z",
    "Machine": "mkey:" + "aa" * 32,
    "Addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
    "AllowedIPs": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
    "Endpoints": ["198.51.100.4:41641"],
    "HomeDERP": 900,
    "DERP": "127.3.3.40:900",
    "Hostinfo": {"Hostname": "pi4", "OS": "linux"},
    "Created": "2025-11-30T09:00:00Z",
    "Cap": 130,
    "Online": True,
    "MachineAuthorized": True,
}

GOLDEN_SELF = {
    "ID": 2,
    "StableID": "2",
    "Name": "myapp.meshlet.internal.",
    "User": 1,
    "Key": "nodekey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
    "KeyExpiry": "0001-01-01T00:00:00Z",
    "Machine": "mkey:" + "bb" * 32,
    "DiscoKey": "discokey:" + "dd" * 32,
    "Addresses": ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
    "AllowedIPs": ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
    "Endpoints": ["192.168.1.20:41641"],
    "HomeDERP": 900,
    "DERP": "127.3.3.40:900",
    "Hostinfo": SELF.hostinfo,
    "Created": "2025-11-30T10:00:00Z",
    "Cap": 130,
    "MachineAuthorized": True,
    "CapMap": {"https://tailscale.com/cap/is-admin": [], "https://tailscale.com/cap/file-sharing": []},
}


def test_peer_node_is_the_golden_dict():
    # No DiscoKey (never polled): omitted, never "" (control.md §2); private Hostinfo fields stay home.
    assert mapper.tail_node(PEER, 130, T0) == GOLDEN_PEER


def test_self_node_has_capmap_full_hostinfo_and_no_online():
    assert mapper.self_node(SELF, 130, T0) == GOLDEN_SELF


def test_full_map_is_the_golden_dict():
    peer = mapper.tail_node(PEER, 130, T0)
    profile = mapper.user_profile(UserRec(1, "alice", "Alice"))
    got = mapper.full_map(SELF, 130, [peer], [profile], tailcfg.FILTER_ALLOW_ALL, CFG, T0 + 1000)
    assert got == {
        "Node": GOLDEN_SELF,
        "Peers": [GOLDEN_PEER],
        "DERPMap": DERP_MAP,
        "DNSConfig": {"Resolvers": [{"Addr": "1.1.1.1"}], "Domains": ["meshlet.internal"], "Proxied": True},
        "Domain": "meshlet.internal",
        "PacketFilter": [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}],
        "UserProfiles": [{"ID": 1, "LoginName": "alice", "DisplayName": "Alice"}],
        "CollectServices": False,
        "ControlTime": "2025-11-30T10:00:01Z",
        "Debug": {"DisableLogTail": True},
    }
    json.dumps(got)  # plain JSON all the way down


def test_full_map_without_peers_omits_peers_and_sorts_by_id():
    got = mapper.full_map(SELF, 130, [], [], [], CFG, T0)
    assert "Peers" not in got  # empty Peers would mean "no change" (§7.5)
    assert got["PacketFilter"] == []  # deliberate: block everything
    p3 = dict(GOLDEN_PEER, ID=3)
    got = mapper.full_map(SELF, 130, [p3, GOLDEN_PEER], [], [], CFG, T0)
    assert [p["ID"] for p in got["Peers"]] == [1, 3]


def test_offline_peer_gets_last_seen_and_expired_peer_is_marked():
    off = replace(PEER, online=False, last_seen_ms=T0 + 1500)
    d = mapper.tail_node(off, 0, T0)
    assert d["Online"] is False and d["LastSeen"] == "2025-11-30T10:00:01.5Z"
    assert "Cap" not in d
    exp = replace(PEER, expiry_ms=T0 - 1)
    d = mapper.tail_node(exp, 130, T0)
    assert d["KeyExpiry"] == "2025-11-30T09:59:59.999Z"
    assert d["Expired"] is True and d["MachineAuthorized"] is False
    assert mapper.tail_node(replace(PEER, expiry_ms=T0 + 1), 130, T0)["MachineAuthorized"] is True


def test_tags_sorted_and_text_keys_accepted():
    rec = replace(PEER, tags=["tag:web", "tag:db"], node_key=NK1.to_text(), machine_key=None, home_derp=0)
    d = mapper.tail_node(rec, 130, T0)
    assert d["Tags"] == ["tag:db", "tag:web"]
    assert d["Key"] == NK1.to_text()
    assert "Machine" not in d and "HomeDERP" not in d and "DERP" not in d


def test_dns_config_without_resolvers_or_domain():
    assert mapper.dns_config(mapper.MapperConfig("meshlet.internal.", None)) == {
        "Domains": ["meshlet.internal"],
        "Proxied": True,
    }
    assert mapper.dns_config(mapper.MapperConfig("", None)) == {}


def test_diff_peer_patch_for_endpoints_and_derp():
    old = mapper.tail_node(PEER, 130, T0)
    new = mapper.tail_node(replace(PEER, endpoints=["198.51.100.4:41642"], home_derp=901), 130, T0)
    assert mapper.diff_peer(old, new) == (
        "patch",
        {"NodeID": 1, "DERPRegion": 901, "Endpoints": ["198.51.100.4:41642"]},
    )
    assert mapper.diff_peer(old, dict(old)) is None


def test_a_peers_first_endpoints_and_home_derp_go_out_whole():
    # tsnet 1.90.9 sometimes never tried a direct path to a peer whose first
    # endpoints came only as a patch (two nodes joining together); whole
    # PeersChanged fixed it in 14 of 14 simultaneous joins.
    joined = mapper.tail_node(replace(PEER, endpoints=[], home_derp=0), 130, T0)
    netchecked = mapper.tail_node(PEER, 130, T0)
    assert mapper.diff_peer(joined, netchecked) == ("changed", netchecked)
    only_derp = mapper.tail_node(replace(PEER, endpoints=[]), 130, T0)
    assert mapper.diff_peer(joined, only_derp) == ("changed", only_derp)


def test_diff_peer_patch_for_disco_key_and_online():
    old = mapper.tail_node(PEER, 130, T0)
    new = mapper.tail_node(replace(PEER, disco_key=DK2), 130, T0)
    assert mapper.diff_peer(old, new) == ("patch", {"NodeID": 1, "DiscoKey": "discokey:" + "dd" * 32})
    off = mapper.tail_node(replace(PEER, online=False, last_seen_ms=T0), 130, T0)
    assert mapper.diff_peer(old, off) == (
        "patch",
        {"NodeID": 1, "LastSeen": "2025-11-30T10:00:00Z", "Online": False},
    )
    # Back online: LastSeen disappears, which a patch need not say.
    assert mapper.diff_peer(off, old) == ("patch", {"NodeID": 1, "Online": True})


def test_diff_peer_whole_node_when_patch_cannot_say_it():
    old = mapper.tail_node(PEER, 130, T0)
    renamed = mapper.tail_node(replace(PEER, fqdn="pi5.meshlet.internal."), 130, T0)
    assert mapper.diff_peer(old, renamed) == ("changed", renamed)
    no_eps = mapper.tail_node(replace(PEER, endpoints=[]), 130, T0)
    assert mapper.diff_peer(old, no_eps) == ("changed", no_eps)
    no_home = mapper.tail_node(replace(PEER, home_derp=0), 130, T0)
    assert mapper.diff_peer(old, no_home) == ("changed", no_home)
    assert mapper.diff_peer(None, old) == ("changed", old)


def test_delta_shapes():
    assert mapper.delta() is None
    assert mapper.delta(removed=[3, 1]) == {"PeersRemoved": [1, 3]}
    got = mapper.delta(changed=[dict(GOLDEN_PEER, ID=5), GOLDEN_PEER], patches=[{"NodeID": 2}], now_ms=T0)
    assert [p["ID"] for p in got["PeersChanged"]] == [1, 5]  # type: ignore[index]
    assert got["PeersChangedPatch"] == [{"NodeID": 2}]  # type: ignore[index]
    assert got["ControlTime"] == "2025-11-30T10:00:00Z"  # type: ignore[index]


def test_go_time_round_trip_and_zero():
    assert tailcfg.go_time(0) == "0001-01-01T00:00:00Z"
    assert tailcfg.parse_go_time("0001-01-01T00:00:00Z", "x") == 0
    assert tailcfg.parse_go_time(None, "x") == 0
    assert tailcfg.parse_go_time("1970-01-01T00:02:03Z", "x") == 123_000  # the client's logout
    assert tailcfg.parse_go_time("2025-11-30T10:00:00.123456789Z", "x") == T0 + 123
    assert tailcfg.parse_go_time("2025-11-30T11:00:00+01:00", "x") == T0
    for ms in (T0, T0 + 1, T0 + 10, T0 + 999):
        assert tailcfg.parse_go_time(tailcfg.go_time(ms), "x") == ms
