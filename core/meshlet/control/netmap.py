"""MapResponse (full and delta) -> NetMap, like Tailscale's controlclient mapSession.

The long poll (`POST /machine/map`, shared/protocol/control.md §7) streams
JSON MapResponses; the first non-keep-alive one is a full map, later ones
are deltas. `NetMap.apply(doc)` merges one decoded MapResponse dict into the
current view exactly as control.md §7.5 says:

* `Node` present -> replaces the self node; absent -> unchanged.
* `Peers` non-empty -> replaces the whole peer set, and the message's
  `PeersChanged` / `PeersRemoved` / `PeersChangedPatch` are ignored. Empty or
  absent `Peers` means "no change", never "no peers".
* `PeersRemoved: [id]` removes; `PeersChanged: [Node]` adds or fully replaces.
* `PeersChangedPatch: [PeerChange]` patches known peers (unknown `NodeID`s
  are ignored). Absent fields, and `DERPRegion: 0`, mean unchanged.
* `OnlineChange: {"<id>": bool}` (older lightweight form).
* `DERPMap`: absent = unchanged; inside it, absent `Regions` = keep old.
* `PacketFilter`: absent = unchanged; a present empty list = block all. It
  is the named filter "base". `PacketFilters`: name -> rules, `null` deletes
  a name, `"*": null` first clears all; rules concatenate in sorted-name order.
* `DNSConfig`: absent = unchanged. `Domain`: empty = unchanged.
  `UserProfiles`: additive.
* A peer whose `AllowedIPs` is null gets its `Addresses` (capver >= 112); a
  legacy `DERP: "127.3.3.40:<region>"` becomes the home DERP.

`NetMap.to_doc()` writes the map back out as one full MapResponse that
`apply` reads into an equal NetMap (the agent's netmap cache; NetMaps
compare by value).

`apply` validates the whole message before changing anything, so a bad
message leaves the NetMap as it was and raises RemoteProtocolError with one
of the reasons: "bad_json", "bad_map", "bad_node", "bad_peer_change",
"bad_derp_map", "bad_filter", "bad_key_text" (from meshlet.key),
"no_self_node" (the first full map lacked `Node`). Unknown fields are
ignored, as Tailscale does. Packet filter rules and the DNS config are
kept as plain JSON data; their meaning belongs to the filter and DNS code.
"""

import json

from ..errors import LocalProtocolError, RemoteProtocolError
from ..key import DiscoPublic, MachinePublic, NodePublic

_LEGACY_DERP_PREFIX = "127.3.3.40:"  # tailcfg.DerpMagicIP


def _fail(reason: str, detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason, detail)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _get_int(doc: "dict[str, object]", name: str, reason: str, default: int = 0) -> int:
    v = doc.get(name)
    if v is None:
        return default
    if not _is_int(v):
        raise _fail(reason, name + " is not an integer")
    return v  # type: ignore[return-value]


def _get_str(doc: "dict[str, object]", name: str, reason: str) -> str:
    v = doc.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _fail(reason, name + " is not a string")
    return v


def _get_strs(doc: "dict[str, object]", name: str, reason: str) -> "list[str] | None":
    v = doc.get(name)
    if v is None:
        return None
    if not isinstance(v, list):
        raise _fail(reason, name + " is not a list")
    for s in v:
        if not isinstance(s, str):
            raise _fail(reason, name + " holds a non-string")
    return list(v)


def _get_bool(doc: "dict[str, object]", name: str, reason: str) -> "bool | None":
    v = doc.get(name)
    if v is None or isinstance(v, bool):
        return v
    raise _fail(reason, name + " is not a boolean")


def _get_dict(doc: "dict[str, object]", name: str, reason: str) -> "dict[str, object] | None":
    v = doc.get(name)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _fail(reason, name + " is not an object")
    return v


def _get_list(doc: "dict[str, object]", name: str, reason: str) -> "list[object] | None":
    v = doc.get(name)
    if v is None:
        return None
    if not isinstance(v, list):
        raise _fail(reason, name + " is not a list")
    return v


class Node:
    """One tailcfg.Node as meshlet uses it: the self node or a peer (control.md §8)."""

    __slots__ = (
        "node_id", "key", "machine_key", "disco_key", "name", "addresses", "allowed_ips",
        "endpoints", "home_derp", "online", "key_expiry", "machine_authorized", "cap",
        "user", "hostinfo", "cap_map",
    )  # fmt: skip

    def __init__(self, node_id: int, key: NodePublic) -> None:
        self.node_id = node_id
        self.key = key
        self.machine_key = MachinePublic.zero()
        self.disco_key = DiscoPublic.zero()
        self.name = ""  # MagicDNS FQDN with its trailing dot
        self.addresses: list[str] = []  # "100.64.0.1/32", "fd7a:...::1/128"
        self.allowed_ips: list[str] = []
        self.endpoints: list[str] = []  # "ip:port"
        self.home_derp = 0  # region ID, 0 = none
        self.online: "bool | None" = None  # None = unknown
        self.key_expiry = ""  # RFC 3339 text; the zero time means never
        self.machine_authorized = False
        self.cap = 0
        self.user = 0
        self.hostinfo: dict[str, object] = {}
        self.cap_map: dict[str, object] = {}

    def copy(self) -> "Node":
        n = Node(self.node_id, self.key)
        for name in Node.__slots__:
            v = getattr(self, name)
            setattr(n, name, list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
        return n

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return False
        for name in Node.__slots__:
            if getattr(self, name) != getattr(other, name):
                return False
        return True

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __repr__(self) -> str:
        return "Node(%d %s %s)" % (self.node_id, self.key.short(), self.name)

    def to_doc(self) -> "dict[str, object]":
        """This node as tailcfg.Node JSON that `parse_node` reads back to an equal Node.

        Zero keys, an empty name, no home DERP, an unknown online state and an
        empty key expiry are left out, as `parse_node` reads their absence.
        """
        doc: dict[str, object] = {"ID": self.node_id, "Key": self.key.to_text()}
        if not self.machine_key.is_zero():
            doc["Machine"] = self.machine_key.to_text()
        if not self.disco_key.is_zero():
            doc["DiscoKey"] = self.disco_key.to_text()
        if self.name:
            doc["Name"] = self.name
        doc["Addresses"] = list(self.addresses)
        doc["AllowedIPs"] = list(self.allowed_ips)
        if self.endpoints:
            doc["Endpoints"] = list(self.endpoints)
        if self.home_derp:
            doc["HomeDERP"] = self.home_derp
        if self.online is not None:
            doc["Online"] = self.online
        if self.key_expiry:
            doc["KeyExpiry"] = self.key_expiry
        doc["MachineAuthorized"] = self.machine_authorized
        if self.cap:
            doc["Cap"] = self.cap
        if self.user:
            doc["User"] = self.user
        doc["Hostinfo"] = dict(self.hostinfo)
        if self.cap_map:
            doc["CapMap"] = dict(self.cap_map)
        return doc


def parse_node(doc: object) -> Node:
    """One tailcfg.Node JSON object -> Node; raises RemoteProtocolError("bad_node")."""
    r = "bad_node"
    if not isinstance(doc, dict):
        raise _fail(r, "a node is not an object")
    node_id = _get_int(doc, "ID", r)
    if node_id <= 0:
        raise _fail(r, "ID must be > 0")
    key = doc.get("Key")
    if not isinstance(key, str):
        raise _fail(r, "Key is missing")
    n = Node(node_id, NodePublic.from_text(key))
    mkey = _get_str(doc, "Machine", r)
    if mkey:
        n.machine_key = MachinePublic.from_text(mkey)
    dkey = _get_str(doc, "DiscoKey", r)
    if dkey:
        n.disco_key = DiscoPublic.from_text(dkey)
    n.name = _get_str(doc, "Name", r)
    n.addresses = _get_strs(doc, "Addresses", r) or []
    allowed = _get_strs(doc, "AllowedIPs", r)
    n.allowed_ips = list(n.addresses) if allowed is None else allowed  # §7.5, capver >= 112
    n.endpoints = _get_strs(doc, "Endpoints", r) or []
    n.home_derp = _get_int(doc, "HomeDERP", r)
    if n.home_derp == 0:
        n.home_derp = _legacy_derp(_get_str(doc, "DERP", r))
    n.online = _get_bool(doc, "Online", r)
    n.key_expiry = _get_str(doc, "KeyExpiry", r)
    n.machine_authorized = bool(_get_bool(doc, "MachineAuthorized", r))
    n.cap = _get_int(doc, "Cap", r)
    n.user = _get_int(doc, "User", r)
    n.hostinfo = _get_dict(doc, "Hostinfo", r) or {}
    n.cap_map = _get_dict(doc, "CapMap", r) or {}
    return n


def _legacy_derp(text: str) -> int:
    if not text.startswith(_LEGACY_DERP_PREFIX):
        return 0
    digits = text[len(_LEGACY_DERP_PREFIX) :]
    if not digits.isdigit():
        raise _fail("bad_node", "DERP is not 127.3.3.40:<region>")
    return int(digits)


class PeerChange:
    """One tailcfg.PeerChange; a None attribute means "unchanged"."""

    __slots__ = ("node_id", "home_derp", "endpoints", "key", "disco_key", "online", "key_expiry", "cap")

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.home_derp = 0  # 0 = unchanged
        self.endpoints: "list[str] | None" = None
        self.key: "NodePublic | None" = None
        self.disco_key: "DiscoPublic | None" = None
        self.online: "bool | None" = None
        self.key_expiry: "str | None" = None
        self.cap = 0  # 0 = unchanged

    def apply_to(self, n: Node) -> None:
        if self.home_derp:
            n.home_derp = self.home_derp
        if self.endpoints is not None:
            n.endpoints = list(self.endpoints)
        if self.key is not None:
            n.key = self.key
        if self.disco_key is not None:
            n.disco_key = self.disco_key
        if self.online is not None:
            n.online = self.online
        if self.key_expiry is not None:
            n.key_expiry = self.key_expiry
        if self.cap:
            n.cap = self.cap


def parse_peer_change(doc: object) -> PeerChange:
    """One PeerChange JSON object; raises RemoteProtocolError("bad_peer_change")."""
    r = "bad_peer_change"
    if not isinstance(doc, dict):
        raise _fail(r, "a peer change is not an object")
    node_id = _get_int(doc, "NodeID", r)
    if node_id <= 0:
        raise _fail(r, "NodeID must be > 0")
    c = PeerChange(node_id)
    c.home_derp = _get_int(doc, "DERPRegion", r)
    c.endpoints = _get_strs(doc, "Endpoints", r)
    key = _get_str(doc, "Key", r)
    if key:
        c.key = NodePublic.from_text(key)
    dkey = _get_str(doc, "DiscoKey", r)
    if dkey:
        c.disco_key = DiscoPublic.from_text(dkey)
    c.online = _get_bool(doc, "Online", r)
    if doc.get("KeyExpiry") is not None:
        c.key_expiry = _get_str(doc, "KeyExpiry", r)
    c.cap = _get_int(doc, "Cap", r)
    return c


class DERPRegion:
    """One DERP region: its ID, code, name and nodes (kept as JSON objects, control.md §9.5)."""

    __slots__ = ("region_id", "code", "name", "nodes")

    def __init__(self, region_id: int, code: str, name: str, nodes: "list[dict[str, object]]") -> None:
        self.region_id = region_id
        self.code = code
        self.name = name
        self.nodes = nodes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DERPRegion) and (self.region_id, self.code, self.name, self.nodes) == (
            other.region_id,
            other.code,
            other.name,
            other.nodes,
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def to_doc(self) -> "dict[str, object]":
        """The region as a DERPMap region object."""
        return {
            "RegionID": self.region_id,
            "RegionCode": self.code,
            "RegionName": self.name,
            "Nodes": self.nodes,
        }


def parse_derp_regions(doc: object) -> "dict[int, DERPRegion] | None":
    """A DERPMap object -> regions by ID, or None when `Regions` is absent (keep the old ones)."""
    r = "bad_derp_map"
    if not isinstance(doc, dict):
        raise _fail(r, "DERPMap is not an object")
    regions = _get_dict(doc, "Regions", r)
    if regions is None:
        return None
    out: dict[int, DERPRegion] = {}
    for k, v in regions.items():
        if v is None:
            continue  # the client strips null regions
        if not isinstance(v, dict):
            raise _fail(r, "a region is not an object")
        rid = _get_int(v, "RegionID", r)
        if rid <= 0 or str(rid) != k:
            raise _fail(r, "region key and RegionID disagree")
        nodes = _get_list(v, "Nodes", r) or []
        for node in nodes:
            if not isinstance(node, dict) or _get_int(node, "RegionID", r, rid) != rid:
                raise _fail(r, "a DERP node is malformed or in the wrong region")
        out[rid] = DERPRegion(rid, _get_str(v, "RegionCode", r), _get_str(v, "RegionName", r), nodes)  # type: ignore[arg-type]
    return out


def _check_rules(v: object) -> "list[dict[str, object]]":
    if not isinstance(v, list):
        raise _fail("bad_filter", "rules are not a list")
    for rule in v:
        if not isinstance(rule, dict):
            raise _fail("bad_filter", "a rule is not an object")
    return v


def decode(data: "bytes | str") -> "dict[str, object]":
    """The JSON text of one MapResponse -> dict; raises RemoteProtocolError("bad_json"/"bad_map")."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeError):
        raise _fail("bad_json", "a MapResponse is not JSON")
    if not isinstance(doc, dict):
        raise _fail("bad_map", "a MapResponse is not an object")
    return doc


def is_keepalive(doc: "dict[str, object]") -> bool:
    """True for a bare keep-alive, which carries nothing for the netmap (control.md §7.3)."""
    return doc.get("KeepAlive") is True and "Node" not in doc and "Peers" not in doc


class NetMap:
    """The client's view of the tailnet: self node, peers by node key, DERP, DNS, filter."""

    def __init__(self) -> None:
        self.self_node: "Node | None" = None
        self.peers: dict[NodePublic, Node] = {}
        self.derp_regions: dict[int, DERPRegion] = {}
        self.dns_config: "dict[str, object] | None" = None
        self.domain = ""
        self.packet_filters: dict[str, list[dict[str, object]]] = {}
        self.user_profiles: dict[int, dict[str, object]] = {}
        self._by_id: dict[int, Node] = {}

    @property
    def packet_filter(self) -> "list[dict[str, object]]":
        """All named rule lists concatenated in sorted-name order (control.md §7.5)."""
        out: list[dict[str, object]] = []
        for name in sorted(self.packet_filters):
            out.extend(self.packet_filters[name])
        return out

    def peer_by_id(self, node_id: int) -> "Node | None":
        return self._by_id.get(node_id)

    def __eq__(self, other: object) -> bool:
        """Same self node, peers (by ID and by key), DERP regions, DNS, domain, filters, profiles."""
        if not isinstance(other, NetMap):
            return False
        return (
            self.self_node == other.self_node
            and self._by_id == other._by_id
            and self.peers == other.peers
            and self.derp_regions == other.derp_regions
            and self.dns_config == other.dns_config
            and self.domain == other.domain
            and self.packet_filters == other.packet_filters
            and self.user_profiles == other.user_profiles
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_doc(self) -> "dict[str, object]":
        """A full MapResponse that `NetMap().apply(doc)` turns into a NetMap equal to this one.

        It is the on-disk cache of the agent (and small enough for a board:
        only what the NetMap keeps). Peers are written in the order the map
        holds them, so that two peers sharing a node key (a control bug)
        resolve the same way after the round trip. Named packet filters are
        written as `PacketFilters`, which also says "no filter" ({}) exactly.

        Raises:
            LocalProtocolError("no_self_node"): the map has no self node yet.
        """
        if self.self_node is None:
            raise LocalProtocolError("no_self_node", "a NetMap without a self node has no MapResponse")
        doc: dict[str, object] = {"Node": self.self_node.to_doc()}
        peers = [n.to_doc() for n in self._by_id.values()]
        if peers:
            doc["Peers"] = peers
        regions: dict[str, object] = {}
        for rid, region in self.derp_regions.items():
            regions[str(rid)] = region.to_doc()
        doc["DERPMap"] = {"Regions": regions}
        doc["PacketFilters"] = dict(self.packet_filters)
        if self.dns_config is not None:
            doc["DNSConfig"] = self.dns_config
        if self.domain:
            doc["Domain"] = self.domain
        if self.user_profiles:
            doc["UserProfiles"] = list(self.user_profiles.values())
        return doc

    def apply(self, doc: "dict[str, object]") -> None:
        """Merges one MapResponse. Validates all of it first; raises RemoteProtocolError."""
        if not isinstance(doc, dict):
            raise _fail("bad_map", "a MapResponse is not an object")
        r = "bad_map"
        node = doc.get("Node")
        self_node = parse_node(node) if node is not None else None
        if self_node is None and self.self_node is None and not is_keepalive(doc):
            raise _fail("no_self_node", "the first MapResponse lacked Node")
        full = [parse_node(p) for p in (_get_list(doc, "Peers", r) or [])]
        changed = [parse_node(p) for p in (_get_list(doc, "PeersChanged", r) or [])]
        patches = [parse_peer_change(p) for p in (_get_list(doc, "PeersChangedPatch", r) or [])]
        removed = _get_list(doc, "PeersRemoved", r) or []
        for i in removed:
            if not _is_int(i):
                raise _fail(r, "PeersRemoved holds a non-integer")
        online = _get_dict(doc, "OnlineChange", r) or {}
        online_ids: list[tuple[int, bool]] = []
        for k, v in online.items():
            if not k.isdigit() or not isinstance(v, bool):
                raise _fail(r, "OnlineChange is not {id: bool}")
            online_ids.append((int(k), v))
        derp = doc.get("DERPMap")
        regions = parse_derp_regions(derp) if derp is not None else None
        filters = self._new_filters(doc)
        dns = _get_dict(doc, "DNSConfig", r)
        domain = _get_str(doc, "Domain", r)
        profiles = _get_list(doc, "UserProfiles", r) or []
        for p in profiles:
            if not isinstance(p, dict) or not _is_int(p.get("ID")):
                raise _fail(r, "a user profile lacks its ID")

        # Validated: now change state.
        if self_node is not None:
            self.self_node = self_node
        if full:
            self._by_id = {}
            for n in full:
                self._by_id[n.node_id] = n
        else:
            for i in removed:
                self._by_id.pop(i, None)  # type: ignore[call-overload]
            for n in changed:
                self._by_id[n.node_id] = n
            for c in patches:
                known = self._by_id.get(c.node_id)
                if known is not None:
                    c.apply_to(known)
        for i, on in online_ids:
            known = self._by_id.get(i)
            if known is not None:
                known.online = on
        self.peers = {}
        for n in self._by_id.values():
            self.peers[n.key] = n
        if regions is not None:
            self.derp_regions = regions
        if filters is not None:
            self.packet_filters = filters
        if dns is not None:
            self.dns_config = dns
        if domain:
            self.domain = domain
        for p in profiles:
            self.user_profiles[p["ID"]] = p  # type: ignore[index,assignment]

    def _new_filters(self, doc: "dict[str, object]") -> "dict[str, list[dict[str, object]]] | None":
        """The filter table after this message, or None if it leaves the filter alone."""
        base = doc.get("PacketFilter")
        named = _get_dict(doc, "PacketFilters", "bad_filter")
        if base is None and named is None:
            return None
        out = dict(self.packet_filters)
        if base is not None:
            out["base"] = _check_rules(base)
        if named is not None:
            if "*" in named and named["*"] is None:
                out = {}
            for name, rules in named.items():
                if rules is None:
                    out.pop(name, None)
                elif name != "*":
                    out[name] = _check_rules(rules)
        return out
