"""Properties of NetMap.apply: random delta sequences agree with a naive reference; garbage -> ProtocolError."""

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet.control import netmap
from meshlet_testing.garbage import parses_or_rejects

_IDS = st.integers(min_value=1, max_value=6)
_EPS = st.lists(st.sampled_from(["192.0.2.1:1", "192.0.2.2:2", "[2001:db8::1]:3"]), max_size=3)


def _key(i: int) -> str:
    return "nodekey:%064x" % i


def _node(i: int, ep: list[str], derp: int) -> dict[str, Any]:
    return {"ID": i, "Key": _key(i), "Name": "n%d." % i, "Addresses": ["100.64.0.%d/32" % i],
            "Endpoints": ep, "HomeDERP": derp}  # fmt: skip


_nodes = st.builds(_node, _IDS, _EPS, st.integers(min_value=0, max_value=3))
_patch = st.fixed_dictionaries(
    {"NodeID": _IDS},
    optional={
        "DERPRegion": st.integers(min_value=0, max_value=3),
        "Endpoints": _EPS,
        "Online": st.booleans(),
    },
)
_delta = st.fixed_dictionaries(
    {},
    optional={
        "Peers": st.lists(_nodes, max_size=4),
        "PeersChanged": st.lists(_nodes, max_size=3),
        "PeersRemoved": st.lists(_IDS, max_size=3),
        "PeersChangedPatch": st.lists(_patch, max_size=3),
    },
)


def _reference(peers: dict[int, dict[str, Any]], d: dict[str, Any]) -> None:
    """control.md §7.5 written as plainly as possible, on raw JSON dicts."""
    if d.get("Peers"):
        peers.clear()
        for n in d["Peers"]:
            peers[n["ID"]] = dict(n)
        return
    for i in d.get("PeersRemoved", []):
        peers.pop(i, None)
    for n in d.get("PeersChanged", []):
        peers[n["ID"]] = dict(n)
    for c in d.get("PeersChangedPatch", []):
        p = peers.get(c["NodeID"])
        if p is None:
            continue
        if c.get("DERPRegion"):
            p["HomeDERP"] = c["DERPRegion"]
        if "Endpoints" in c:
            p["Endpoints"] = c["Endpoints"]
        if "Online" in c:
            p["Online"] = c["Online"]


@settings(max_examples=200)
@given(st.lists(_delta, max_size=8))
def test_deltas_match_the_naive_reference(deltas: list[dict[str, Any]]) -> None:
    nm = netmap.NetMap()
    nm.apply({"Node": _node(99, [], 900)})
    ref: dict[int, dict[str, Any]] = {}
    for d in deltas:
        nm.apply(d)
        _reference(ref, d)
    got = {n.node_id: (n.key.to_text(), n.endpoints, n.home_derp, n.online) for n in nm.peers.values()}
    want = {i: (p["Key"], p["Endpoints"], p["HomeDERP"], p.get("Online")) for i, p in ref.items()}
    assert got == want


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["Node", "Peers", "PeersChanged", "PeersRemoved", "PeersChangedPatch", "OnlineChange", "DERPMap",
     "PacketFilter", "PacketFilters", "DNSConfig", "Domain", "UserProfiles", "KeepAlive"]
)  # fmt: skip


@given(st.dictionaries(_fields, _json, max_size=4))
def test_garbage_messages_apply_or_reject(doc: dict[str, Any]) -> None:
    nm = netmap.NetMap()
    nm.apply({"Node": _node(99, [], 900), "Peers": [_node(1, [], 900)]})
    parses_or_rejects(nm.apply, doc)
    assert nm.self_node is not None


@given(st.binary(max_size=64) | st.text(max_size=64))
def test_garbage_text_decodes_or_rejects(data: Any) -> None:
    parses_or_rejects(netmap.decode, data)


@given(_delta)
def test_json_round_trip_of_deltas_applies(d: dict[str, Any]) -> None:
    nm = netmap.NetMap()
    nm.apply({"Node": _node(99, [], 900)})
    nm.apply(netmap.decode(json.dumps(d)))


_full = st.fixed_dictionaries(
    {"Node": _nodes},
    optional={
        "DERPMap": st.just(
            {"Regions": {"900": {"RegionID": 900, "RegionCode": "x", "Nodes": [{"Name": "a"}]}}}
        ),
        "PacketFilter": st.lists(st.just({"SrcIPs": ["*"]}), max_size=2),
        "PacketFilters": st.dictionaries(
            st.sampled_from(["a", "b", "*"]), st.none() | st.just([]), max_size=2
        ),
        "DNSConfig": st.dictionaries(st.text(max_size=4), _json, max_size=2),
        "Domain": st.text(max_size=8),
        "UserProfiles": st.lists(st.fixed_dictionaries({"ID": st.integers(0, 3)}), max_size=2),
        "OnlineChange": st.dictionaries(st.integers(1, 6).map(str), st.booleans(), max_size=2),
    },
)


@settings(max_examples=200)
@given(_full, st.lists(_delta | _full, max_size=6))
def test_to_doc_then_apply_is_an_equal_netmap(first: dict[str, Any], later: list[dict[str, Any]]) -> None:
    nm = netmap.NetMap()
    for d in [first, *later]:
        nm.apply(d)
    back = netmap.NetMap()
    back.apply(netmap.decode(json.dumps(nm.to_doc())))
    assert back == nm
    assert back.to_doc() == nm.to_doc()
