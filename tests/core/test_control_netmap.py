"""NetMap: control.md §14's full map and delta, and §7.5's merge rules."""

from meshlet.control import netmap
from meshlet.errors import RemoteProtocolError
from meshlet.key import DiscoPublic, NodePublic
from meshlet_testing.raises import raises

_K1 = "nodekey:" + "11" * 32
_K2 = "nodekey:" + "22" * 32
_K3 = "nodekey:" + "33" * 32
_D1 = "discokey:" + "d1" * 32
_ALLOW_ALL = [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]


def _node(node_id, key, name, **extra):
    doc = {
        "ID": node_id, "StableID": str(node_id), "Name": name, "User": 1, "Key": key,
        "KeyExpiry": "0001-01-01T00:00:00Z", "Machine": "mkey:" + "ab" * 32, "DiscoKey": _D1,
        "Addresses": ["100.64.0.%d/32" % node_id, "fd7a:115c:a1e0::%d/128" % node_id],
        "AllowedIPs": ["100.64.0.%d/32" % node_id, "fd7a:115c:a1e0::%d/128" % node_id],
        "HomeDERP": 900, "Hostinfo": {"Hostname": name.split(".")[0]}, "Cap": 130,
        "MachineAuthorized": True,
    }  # fmt: skip
    doc.update(extra)
    return doc


def _full():
    return {
        "Node": _node(2, _K2, "myapp.meshlet.internal.", CapMap={"https://tailscale.com/cap/is-admin": []}),
        "Peers": [_node(1, _K1, "pi4.meshlet.internal.", Endpoints=["198.51.100.4:41641"], Online=True)],
        "DERPMap": {"Regions": {"900": {"RegionID": 900, "RegionCode": "mlt", "RegionName": "lab",
                    "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "derp.lab.example", "DERPPort": 443}]}}},
        "DNSConfig": {"Resolvers": [{"Addr": "1.1.1.1"}], "Domains": ["meshlet.internal"], "Proxied": True},
        "Domain": "meshlet.internal",
        "PacketFilter": _ALLOW_ALL,
        "UserProfiles": [{"ID": 1, "LoginName": "alice", "DisplayName": "alice"}],
        "CollectServices": False, "ControlTime": "2025-11-30T10:00:01Z", "Debug": {"DisableLogTail": True},
    }  # fmt: skip


def _loaded():
    nm = netmap.NetMap()
    nm.apply(_full())
    return nm


def test_full_map_of_section_14():
    nm = _loaded()
    me = nm.self_node
    assert me is not None
    assert me.key == NodePublic.from_text(_K2) and me.name == "myapp.meshlet.internal."
    assert me.addresses == ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"]
    assert me.machine_authorized and "https://tailscale.com/cap/is-admin" in me.cap_map
    peer = nm.peers[NodePublic.from_text(_K1)]
    assert peer.node_id == 1 and peer.name == "pi4.meshlet.internal."
    assert peer.endpoints == ["198.51.100.4:41641"] and peer.home_derp == 900
    assert peer.allowed_ips == ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
    assert peer.disco_key == DiscoPublic.from_text(_D1) and peer.online is True
    assert list(nm.derp_regions) == [900] and nm.derp_regions[900].code == "mlt"
    assert nm.derp_regions[900].nodes[0]["HostName"] == "derp.lab.example"
    assert nm.domain == "meshlet.internal" and nm.dns_config is not None
    assert nm.packet_filter == _ALLOW_ALL
    assert nm.user_profiles[1]["LoginName"] == "alice"


def test_decode_of_json_text():
    import json

    doc = netmap.decode(json.dumps(_full()).encode())
    assert doc["Domain"] == "meshlet.internal"
    raises(RemoteProtocolError, "bad_json", netmap.decode, b"{nope")
    raises(RemoteProtocolError, "bad_map", netmap.decode, b"[1]")


def test_patch_of_section_14():
    nm = _loaded()
    nm.apply({"PeersChangedPatch": [{"NodeID": 1, "DERPRegion": 901, "Endpoints": ["198.51.100.4:41641"]}]})
    peer = nm.peers[NodePublic.from_text(_K1)]
    assert peer.home_derp == 901 and peer.endpoints == ["198.51.100.4:41641"]
    assert peer.online is True  # absent = unchanged


def test_patch_zero_region_and_unknown_id_change_nothing():
    nm = _loaded()
    nm.apply({"PeersChangedPatch": [{"NodeID": 1, "DERPRegion": 0}, {"NodeID": 77, "Online": False}]})
    assert nm.peers[NodePublic.from_text(_K1)].home_derp == 900
    assert len(nm.peers) == 1


def test_patch_key_rekeys_the_peer():
    nm = _loaded()
    nm.apply({"PeersChangedPatch": [{"NodeID": 1, "Key": _K3, "Online": False}]})
    assert list(nm.peers) == [NodePublic.from_text(_K3)]
    assert nm.peers[NodePublic.from_text(_K3)].online is False


def test_empty_or_absent_peers_mean_no_change():
    nm = _loaded()
    nm.apply({"Peers": []})
    nm.apply({})
    assert len(nm.peers) == 1


def test_peers_replace_all_and_ignore_the_other_deltas():
    nm = _loaded()
    nm.apply({"Peers": [_node(3, _K3, "c.")], "PeersRemoved": [3], "PeersChanged": [_node(1, _K1, "a.")]})
    assert list(nm.peers) == [NodePublic.from_text(_K3)]


def test_changed_upserts_and_removed_removes():
    nm = _loaded()
    nm.apply({"PeersChanged": [_node(3, _K3, "c."), _node(1, _K1, "renamed.")]})
    assert len(nm.peers) == 2 and nm.peers[NodePublic.from_text(_K1)].name == "renamed."
    nm.apply({"PeersRemoved": [1, 3]})
    assert nm.peers == {}


def test_online_change_legacy_form():
    nm = _loaded()
    nm.apply({"OnlineChange": {"1": False}})
    assert nm.peers[NodePublic.from_text(_K1)].online is False


def test_null_allowed_ips_and_legacy_derp():
    nm = _loaded()
    nm.apply({"PeersChanged": [_node(3, _K3, "c.", AllowedIPs=None, HomeDERP=0, DERP="127.3.3.40:905")]})
    p = nm.peers[NodePublic.from_text(_K3)]
    assert p.allowed_ips == p.addresses and p.home_derp == 905


def test_filters_empty_list_blocks_and_named_filters():
    nm = _loaded()
    nm.apply({"PacketFilter": []})
    assert nm.packet_filter == []
    nm.apply({"PacketFilters": {"b": _ALLOW_ALL, "a": [{"SrcIPs": ["1.2.3.4"]}]}})
    assert nm.packet_filter == [{"SrcIPs": ["1.2.3.4"]}] + _ALLOW_ALL
    nm.apply({"PacketFilters": {"a": None}})
    assert nm.packet_filter == _ALLOW_ALL
    nm.apply({"PacketFilters": {"*": None, "z": []}})
    assert nm.packet_filters == {"z": []}


def test_derp_map_without_regions_keeps_old_and_domain_empty_keeps_old():
    nm = _loaded()
    nm.apply({"DERPMap": {"HomeParams": {}}, "Domain": ""})
    assert list(nm.derp_regions) == [900] and nm.domain == "meshlet.internal"
    nm.apply({"DERPMap": {"Regions": {"901": {"RegionID": 901, "Nodes": []}, "902": None}}})
    assert list(nm.derp_regions) == [901]


def test_first_map_must_carry_node():
    nm = netmap.NetMap()
    nm.apply({"KeepAlive": True})
    raises(RemoteProtocolError, "no_self_node", nm.apply, {"Peers": [_node(1, _K1, "a.")]})


def test_bad_input_raises_and_leaves_the_map_alone():
    nm = _loaded()
    raises(RemoteProtocolError, "bad_node", nm.apply, {"PeersChanged": [{"ID": 5}]})
    raises(RemoteProtocolError, "bad_key_text", nm.apply, {"PeersChanged": [_node(5, "nodekey:xx", "e.")]})
    raises(RemoteProtocolError, "bad_peer_change", nm.apply, {"PeersChangedPatch": [{"NodeID": "1"}]})
    raises(RemoteProtocolError, "bad_map", nm.apply, {"PeersRemoved": ["1"], "Peers": []})
    raises(RemoteProtocolError, "bad_derp_map", nm.apply, {"DERPMap": {"Regions": {"1": {"RegionID": 2}}}})
    raises(RemoteProtocolError, "bad_filter", nm.apply, {"PacketFilter": {"x": 1}})
    raises(RemoteProtocolError, "bad_node", nm.apply, {"PeersChanged": [_node(5, _K3, "e.")], "Node": 3})
    assert len(nm.peers) == 1 and nm.packet_filter == _ALLOW_ALL and list(nm.derp_regions) == [900]


def _round_trip(nm):
    back = netmap.NetMap()
    back.apply(nm.to_doc())
    return back


def test_to_doc_of_the_full_map_reads_back_equal():
    nm = _loaded()
    back = _round_trip(nm)
    assert back == nm and not (back != nm)
    assert back.peers[NodePublic.from_text(_K1)].online is True
    assert back.packet_filter == _ALLOW_ALL and back.domain == "meshlet.internal"


def test_to_doc_after_deltas_reads_back_equal():
    nm = _loaded()
    nm.apply({"PeersChanged": [_node(3, _K3, "c.", AllowedIPs=None, Online=False, DERP="127.3.3.40:905")]})
    nm.apply({"PeersChangedPatch": [{"NodeID": 1, "Endpoints": [], "KeyExpiry": "2030-01-01T00:00:00Z"}]})
    nm.apply({"PacketFilters": {"z": [], "a": [{"SrcIPs": ["1.2.3.4"]}]}, "UserProfiles": [{"ID": 7}]})
    assert _round_trip(nm) == nm


def test_to_doc_keeps_a_block_all_filter_and_no_filter_apart():
    nm = _loaded()
    nm.apply({"PacketFilter": []})
    assert _round_trip(nm).packet_filters == {"base": []}
    bare = netmap.NetMap()
    bare.apply({"Node": _node(2, _K2, "me.")})
    back = _round_trip(bare)
    assert back == bare and back.packet_filters == {} and back.dns_config is None


def test_netmaps_that_differ_are_not_equal():
    a, b = _loaded(), _loaded()
    assert a == b
    b.apply({"PeersChangedPatch": [{"NodeID": 1, "Online": False}]})
    assert a != b
    b = _loaded()
    b.apply({"Domain": "other.internal"})
    assert a != b
    assert a != netmap.NetMap() and netmap.NetMap() == netmap.NetMap()


def test_to_doc_needs_a_self_node():
    from meshlet.errors import LocalProtocolError

    raises(LocalProtocolError, "no_self_node", netmap.NetMap().to_doc)


def test_to_doc_is_json():
    import json

    nm = _loaded()
    back = netmap.NetMap()
    back.apply(netmap.decode(json.dumps(nm.to_doc())))
    assert back == nm
