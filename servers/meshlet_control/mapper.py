"""The mapper: state records in, MapResponse dicts out. Pure: no I/O, no clock, no database.

What a Tailscale 1.90 client needs in its netmap (shared/protocol/control.md
§7.4, §8, §9; names.md), built from the State's Node and User records:

    full map (first message of a long poll)
      Node          the viewer itself: self_node()          §8.2 MachineAuthorized, CapMap
      Peers         tail_node() of every visible peer, by ID §8.1, §8.4 DiscoKey + HomeDERP
      DERPMap       from the configuration                   §9.5
      DNSConfig     MagicDNS on, base domain as search path  §9.4, names.md §5
      Domain        the tailnet's name (the base domain)
      PacketFilter  the viewer's compiled rules              §9.2 (empty list = block all)
      UserProfiles  the viewer's user and every peer's       §9.1
      ControlTime, CollectServices=false, Debug{DisableLogTail}

    deltas (later messages), chosen by diff_peer():
      PeersChangedPatch  only Endpoints/DERP/DiscoKey/Online/LastSeen/Key/KeyExpiry/Cap moved
      PeersChanged       anything else about a peer changed (or a new peer)
      PeersRemoved       a peer went away
      Node               the viewer's own record changed (name, expiry, addresses…)

A peer's dict does not depend on who looks at it (each peer carries its own
capver in `Cap`, unlike headscale which copies the viewer's), so callers can
build it once per change and share it between every viewer (poll.py does).

Records are duck-typed (`NodeRecord`, `UserRecord` below): keys may be the
core's key objects or their text forms.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

from . import tailcfg

# --- specification constants -------------------------------------------------------

# PeerChange fields (control.md §7.5) and the Node fields they stand for: a peer
# whose dict changed only in these can be patched instead of resent whole.
_PATCHABLE = {
    "Endpoints": "Endpoints",
    "HomeDERP": "DERPRegion",
    "DiscoKey": "DiscoKey",
    "Online": "Online",
    "LastSeen": "LastSeen",
    "Key": "Key",
    "KeyExpiry": "KeyExpiry",
    "Cap": "Cap",
}
_DERIVED = frozenset(("DERP",))  # follows HomeDERP; never patched on its own

# --- implementation constants ------------------------------------------------------

# Hostinfo fields passed on to peers. Left out: NetInfo (changes all the time,
# and no peer reads it), log IDs and push tokens (private to the node), WoLMACs.
PEER_HOSTINFO_FIELDS = (
    "Hostname",
    "OS",
    "OSVersion",
    "IPNVersion",
    "App",
    "Package",
    "DeviceModel",
    "Distro",
    "DistroVersion",
    "Machine",
    "GoArch",
    "ShareeNode",
    "RoutableIPs",
    "RequestTags",
    "Services",
    "Userspace",
    "UserspaceRouter",
    "SSH_HostKeys",
    "Location",
)


class NodeRecord(Protocol):
    """What the mapper reads from a node (state.Node satisfies it)."""

    @property
    def id(self) -> int: ...
    @property
    def stable_id(self) -> str: ...
    @property
    def user_id(self) -> int: ...
    @property
    def hostname(self) -> str: ...
    @property
    def fqdn(self) -> str: ...
    @property
    def machine_key(self) -> Any: ...
    @property
    def node_key(self) -> Any: ...
    @property
    def disco_key(self) -> Any: ...
    @property
    def ipv4(self) -> str | None: ...
    @property
    def ipv6(self) -> str | None: ...
    @property
    def endpoints(self) -> Any: ...
    @property
    def home_derp(self) -> int: ...
    @property
    def hostinfo(self) -> Any: ...
    @property
    def tags(self) -> Any: ...
    @property
    def created_ms(self) -> int: ...
    @property
    def last_seen_ms(self) -> int: ...
    @property
    def online(self) -> bool: ...
    @property
    def expiry_ms(self) -> int: ...
    @property
    def authorized(self) -> bool: ...


class UserRecord(Protocol):
    """What the mapper reads from a user (state.User satisfies it)."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def display_name(self) -> str: ...


class MapperConfig:
    """The tailnet-wide parts of every map.

    Attributes:
        base_domain: MagicDNS suffix without dots, e.g. "meshlet.internal".
        derp_map: tailcfg.DERPMap as JSON (control.md §9.5), sent as is.
        nameservers: upstream resolvers for names outside the tailnet ("1.1.1.1",
            "9.9.9.9:53", "https://…"); empty = the node keeps its OS resolver.
        domain: the tailnet's name in MapResponse.Domain (default: base_domain).
        magic_dns: nodes answer <name>.<base_domain> themselves (DNSConfig.Proxied).
    """

    def __init__(
        self,
        base_domain: str,
        derp_map: dict[str, Any] | None,
        nameservers: Iterable[str] = (),
        domain: str = "",
        magic_dns: bool = True,
    ) -> None:
        self.base_domain = base_domain.strip(".")
        self.derp_map = derp_map
        self.nameservers = list(nameservers)
        self.domain = domain or self.base_domain
        self.magic_dns = magic_dns


def key_text(key: Any) -> str | None:
    """A key object or text as its text form; None for absent or all-zero keys."""
    if key is None or key == "":
        return None
    text = key if isinstance(key, str) else key.to_text()
    if text.endswith("0" * 64):
        return None
    return str(text)


def addresses(node: NodeRecord) -> list[str]:
    """The node's own prefixes, IPv4 first: ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]."""
    return [tailcfg.prefix(a) for a in (node.ipv4, node.ipv6) if a]


def peer_hostinfo(hostinfo: Any) -> dict[str, Any]:
    """The part of a node's Hostinfo its peers get (PEER_HOSTINFO_FIELDS)."""
    if not isinstance(hostinfo, dict):
        return {}
    return {k: hostinfo[k] for k in PEER_HOSTINFO_FIELDS if hostinfo.get(k) not in (None, "", [], {})}


def tail_node(node: NodeRecord, capver: int, now_ms: int, user_id: int | None = None) -> dict[str, Any]:
    """A node as its peers see it: tailcfg.Node (control.md §8.1).

    Args:
        node: the record.
        capver: that node's own capability version (0: unknown, omitted).
        now_ms: the server's clock, to tell an expired key.
        user_id: the owner shown to peers, if not node.user_id (tagged nodes
            belong to headscale's "tagged-devices" user).
    """
    addrs = addresses(node)
    out: dict[str, Any] = {
        "ID": node.id,
        "StableID": node.stable_id,
        "Name": node.fqdn,
        "User": node.user_id if user_id is None else user_id,
        "Key": key_text(node.node_key),
        "KeyExpiry": tailcfg.go_time(node.expiry_ms),
    }
    machine = key_text(node.machine_key)
    if machine:
        out["Machine"] = machine
    disco = key_text(node.disco_key)
    if disco:
        out["DiscoKey"] = disco
    out["Addresses"] = addrs
    out["AllowedIPs"] = list(addrs)
    if node.endpoints:
        out["Endpoints"] = list(node.endpoints)
    if node.home_derp:
        out["HomeDERP"] = node.home_derp
        out["DERP"] = tailcfg.legacy_derp(node.home_derp)
    out["Hostinfo"] = peer_hostinfo(node.hostinfo)
    out["Created"] = tailcfg.go_time(node.created_ms)
    if capver:
        out["Cap"] = capver
    if node.tags:
        out["Tags"] = sorted(node.tags)
    out["Online"] = bool(node.online)
    if not node.online and node.last_seen_ms:
        out["LastSeen"] = tailcfg.go_time(node.last_seen_ms)
    expired = is_expired(node, now_ms)
    out["MachineAuthorized"] = bool(node.authorized) and not expired
    if expired:
        out["Expired"] = True
    return out


def self_node(node: NodeRecord, capver: int, now_ms: int, user_id: int | None = None) -> dict[str, Any]:
    """The viewer's own tailcfg.Node: the peer form plus its CapMap (control.md §8.2).

    MachineAuthorized must be true or the client sits in NeedsMachineAuth; a
    KeyExpiry in the past puts it in NeedsLogin.
    """
    out = tail_node(node, capver, now_ms, user_id)
    out.pop("Online", None)
    out.pop("LastSeen", None)
    out["Hostinfo"] = dict(node.hostinfo) if isinstance(node.hostinfo, dict) else {}
    out["CapMap"] = {tailcfg.CAP_IS_ADMIN: [], tailcfg.CAP_FILE_SHARING: []}
    return out


def is_expired(node: NodeRecord, now_ms: int) -> bool:
    """True once a node's key expiry (0 = never) has passed."""
    return node.expiry_ms != 0 and node.expiry_ms <= now_ms


def user_profile(user: UserRecord) -> dict[str, Any]:
    """tailcfg.UserProfile (control.md §9.1)."""
    return {"ID": user.id, "LoginName": user.name, "DisplayName": user.display_name or user.name}


def dns_config(cfg: MapperConfig) -> dict[str, Any]:
    """tailcfg.DNSConfig with MagicDNS on (control.md §9.4, names.md §5).

    The client adds the local route for the base domain and the reverse zones
    itself (from its own Name), so Routes stays out, as in headscale.
    """
    out: dict[str, Any] = {}
    if cfg.nameservers:
        out["Resolvers"] = [{"Addr": ns} for ns in cfg.nameservers]
    if cfg.base_domain:
        out["Domains"] = [cfg.base_domain]
        if cfg.magic_dns:
            out["Proxied"] = True
    return out


def full_map(
    viewer: NodeRecord,
    viewer_capver: int,
    peers: Iterable[dict[str, Any]],
    profiles: Iterable[dict[str, Any]],
    packet_filter: list[dict[str, Any]],
    cfg: MapperConfig,
    now_ms: int,
    user_id: int | None = None,
) -> dict[str, Any]:
    """The first message of a long poll: everything (control.md §7.4).

    Args:
        viewer: the node asking.
        viewer_capver: its MapRequest.Version.
        peers: tail_node() dicts of the peers it may see, any order.
        profiles: user_profile() dicts of the viewer's and the peers' users.
        packet_filter: its rules from policy.Compiled.filter_for (an empty list blocks
            every inbound connection; that is deliberate, see §7.5).
        cfg: tailnet-wide settings.
        now_ms: the server's clock.
        user_id: the viewer's owner, if not viewer.user_id.
    """
    out: dict[str, Any] = {"Node": self_node(viewer, viewer_capver, now_ms, user_id)}
    peer_list = sorted(peers, key=lambda p: int(p["ID"]))
    if peer_list:  # an empty Peers means "no change", never "no peers" (§7.5)
        out["Peers"] = peer_list
    if cfg.derp_map is not None:
        out["DERPMap"] = cfg.derp_map
    out["DNSConfig"] = dns_config(cfg)
    if cfg.domain:
        out["Domain"] = cfg.domain
    out["PacketFilter"] = packet_filter
    out["UserProfiles"] = sorted(profiles, key=lambda p: int(p["ID"]))
    out["CollectServices"] = False
    out["ControlTime"] = tailcfg.go_time(now_ms)
    out["Debug"] = {"DisableLogTail": True}
    return out


def diff_peer(old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """How to tell viewers that a peer's dict went from `old` to `new`.

    Returns:
        None: nothing a viewer sees changed.
        ("patch", PeerChange): only patchable fields moved (control.md §7.5).
        ("changed", node): send the whole node in PeersChanged.
    """
    if old is None:
        return "changed", new
    if old == new:
        return None
    moved = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} - _DERIVED
    if not moved <= _PATCHABLE.keys():
        return "changed", new
    if ("Endpoints" in moved and not old.get("Endpoints")) or ("HomeDERP" in moved and not old.get("HomeDERP")):
        # A peer's first endpoints or home DERP go out whole: tsnet 1.90.9 was
        # seen (8 runs in 48) never to start disco towards a peer whose first
        # endpoints arrived only as a PeersChangedPatch (docs/protocol-notes.md).
        return "changed", new
    patch: dict[str, Any] = {"NodeID": new["ID"]}
    for field in sorted(moved):
        if field not in new:
            # A field that disappears (no endpoints any more, home DERP gone,
            # back online so no LastSeen) cannot be said in a PeerChange,
            # whose absent fields mean "unchanged".
            if field == "LastSeen":
                continue
            return "changed", new
        patch[_PATCHABLE[field]] = new[field]
    if len(patch) == 1:
        return None
    return "patch", patch


def delta(
    changed: Iterable[dict[str, Any]] = (),
    patches: Iterable[dict[str, Any]] = (),
    removed: Iterable[int] = (),
    now_ms: int = 0,
) -> dict[str, Any] | None:
    """A MapResponse carrying peer deltas; None if there is nothing to say."""
    out: dict[str, Any] = {}
    changed_list = sorted(changed, key=lambda p: int(p["ID"]))
    patch_list = sorted(patches, key=lambda p: int(p["NodeID"]))
    removed_list = sorted(removed)
    if changed_list:
        out["PeersChanged"] = changed_list
    if patch_list:
        out["PeersChangedPatch"] = patch_list
    if removed_list:
        out["PeersRemoved"] = removed_list
    if not out:
        return None
    if now_ms:
        out["ControlTime"] = tailcfg.go_time(now_ms)
    return out
