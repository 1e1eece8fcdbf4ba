"""Tailscale ACL policy files: parse, check, and compile to tailcfg packet filters.

The supported subset of Tailscale's policy format (HuJSON, see hujson.py):

    {
      "groups":    {"group:eng": ["alice@", "bob@example.com"]},
      "tagOwners": {"tag:server": ["group:eng"], "tag:ci": []},
      "hosts":     {"nas": "100.64.0.10", "lab": "192.168.7.0/24"},
      "acls": [
        {"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22,443", "nas:*"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
        {"action": "accept", "src": ["tag:ci"], "dst": ["tag:server:8000-8099"], "proto": "tcp"},
      ],
    }

Aliases, in `src` and in the part of `dst` before the last colon:

| alias | means |
| --- | --- |
| `*` | every address (rendered `"*"`, as Tailscale does) |
| `name@`, `name@domain` | the untagged nodes of the meshlet user `name` (the part before `@`) |
| `group:x` | the users listed in `groups` |
| `tag:x` | nodes carrying the tag; the tag must be defined in `tagOwners` |
| `autogroup:member` | every untagged node |
| `autogroup:tagged` | every tagged node |
| `autogroup:self` | dst only: the nodes of the same user as the source (sources must be users, groups or autogroup:member) |
| a name from `hosts` | that host's address or prefix |
| `100.64.0.1`, `10.0.0.0/8`, `fd7a:115c:a1e0::/48` | that address or prefix (no host bits set) |

Ports after the last colon of a `dst`: `*`, `22`, `80,443`, `8000-8099` or a
mix. `proto` (optional): a name (`tcp`, `udp`, `icmp`, `sctp`, `gre`, `esp`,
`ah`, `igmp`, `ipv4`, `egp`, `igp`, `ipv6-icmp`) or a number 0-255; protocols
without ports need `*`. The legacy field names `users`/`ports` are accepted
for `src`/`dst`. `grants` are refused (rewrite them as acls); `ssh`, `tests`,
`nodeAttrs`, `autoApprovers` and a few other sections are accepted and ignored,
each with a warning.

No policy at all, or a policy without an `acls` section, allows everything
(headscale's rule); `"acls": []` allows nothing.

Compiling (`compile_policy`) resolves aliases against the current nodes and
users. A node's packet filter (control.md §9.2) is the rules whose
destinations include one of its own addresses, with `DstPorts` cut down to
those addresses, as Tailscale and headscale send it: the filter only governs
packets arriving at that node. A node may see a peer in its netmap when
either may open connections to the other.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence, Union

from . import hujson

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

ALLOW_ALL: list[dict[str, Any]] = [
    {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}
]
"""tailcfg.FilterAllowAll: what a node gets when there is no policy."""

PROTOCOLS: dict[str, list[int]] = {
    "icmp": [1, 58],
    "igmp": [2],
    "ipv4": [4],
    "ip-in-ip": [4],
    "tcp": [6],
    "egp": [8],
    "igp": [9],
    "udp": [17],
    "gre": [47],
    "esp": [50],
    "ah": [51],
    "ipv6-icmp": [58],
    "icmpv6": [58],
    "sctp": [132],
}
"""Protocol names Tailscale's policy format knows. `icmp` covers ICMPv4 and ICMPv6, as headscale has it."""

_PORT_PROTOCOLS = {6, 17, 132}
_TOP_LEVEL = ("acls", "groups", "hosts", "tagOwners")
_IGNORED = (
    "ssh",
    "tests",
    "sshTests",
    "nodeAttrs",
    "autoApprovers",
    "postures",
    "defaultSrcPosture",
    "ipsets",
    "derpMap",
    "disableIPv4",
    "randomizeClientPort",
    "OneCGNATRoute",
    "attrs",
)
_ACL_FIELDS = ("action", "src", "dst", "proto", "users", "ports")
_GROUP = re.compile(r"^group:[A-Za-z0-9][A-Za-z0-9._-]*$")
_TAG = re.compile(r"^tag:[A-Za-z][A-Za-z0-9-]*$")
_HOST = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_USER = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_AUTOGROUPS = ("autogroup:member", "autogroup:tagged", "autogroup:self")
_ALIAS_HINT = (
    'users are written name@, groups group:x, tags tag:x; host names must be defined in "hosts"; '
    "or give an IP address or prefix"
)


class PolicyError(ValueError):
    """A policy mistake at a 1-based `line` and `column` (0 when not tied to a place); `hint` says the fix."""

    def __init__(self, message: str, line: int = 0, column: int = 0, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.hint = hint

    def __str__(self) -> str:
        where = "line %d, column %d: " % (self.line, self.column) if self.line else ""
        return where + self.message + ("; " + self.hint if self.hint else "")


class NodeLike(Protocol):
    """What compiling needs to know about a node (state.Node has it)."""

    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def ipv4(self) -> str: ...
    @property
    def ipv6(self) -> str: ...
    @property
    def tags(self) -> list[str]: ...


class UserLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Alias:
    """One resolved-later name: kind is any, user, group, tag, autogroup, host or prefix."""

    kind: str
    name: str
    network: IPNetwork | None = None


@dataclass
class Dest:
    alias: Alias
    ports: list[tuple[int, int]]


@dataclass
class Rule:
    src: list[Alias]
    dst: list[Dest]
    protos: list[int]
    line: int


@dataclass
class Policy:
    """A checked policy. `acls` None means the file has no acls section (allow all)."""

    text: str
    groups: dict[str, list[str]] = field(default_factory=dict)
    tag_owners: dict[str, list[str]] = field(default_factory=dict)
    hosts: dict[str, IPNetwork] = field(default_factory=dict)
    acls: list[Rule] | None = None
    warnings: list[str] = field(default_factory=list)


# -- parsing ---------------------------------------------------------------------------


def parse_policy(text: str) -> Policy:
    """Parses and checks a policy file. Raises PolicyError naming the place and the fix."""
    try:
        doc = hujson.parse(text)
    except hujson.HujsonError as e:
        raise PolicyError(e.message, e.line, e.column, e.hint) from None
    return _Checker(doc).policy()


class _Checker:
    def __init__(self, doc: hujson.Document) -> None:
        self.doc = doc
        self.pol = Policy(doc.text)

    def fail(self, path: hujson.Path, message: str, hint: str = "", key: bool = False) -> PolicyError:
        line, col = self.doc.position(path, key)
        return PolicyError(message, line, col, hint)

    def policy(self) -> Policy:
        top = self.doc.value
        if not isinstance(top, dict):
            raise self.fail((), "a policy is a JSON object", 'start with {"acls": [...]}')
        for key in top:
            if key in _TOP_LEVEL:
                continue
            if key in _IGNORED:
                line, _ = self.doc.position((key,), key=True)
                self.pol.warnings.append(
                    "line %d: %r is not supported by meshlet and is ignored" % (line, key)
                )
                continue
            if key == "grants":
                raise self.fail((key,), "grants are not supported", 'write the rules as "acls"', key=True)
            near = [k for k in _TOP_LEVEL + _IGNORED if k.lower() == key.lower()]
            hint = "did you mean %r?" % near[0] if near else "known sections: " + ", ".join(_TOP_LEVEL)
            raise self.fail((key,), "unknown section %r" % key, hint, key=True)
        self.groups(top.get("groups", {}))
        self.tag_owners(top.get("tagOwners", {}))
        self.hosts(top.get("hosts", {}))
        if "acls" in top:
            self.pol.acls = self.acls(top["acls"])
        else:
            self.pol.warnings.append('the policy has no "acls" section: every node may reach every other')
        return self.pol

    def object_of(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail((key,), "%r must be an object" % key, 'write "%s": {...}' % key)
        return value

    def string_list(self, path: hujson.Path, value: Any, what: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(path, "%s must be a list of strings" % what, 'write ["..."]')
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise self.fail(path + (i,), "%s must be a list of strings" % what, "quote each entry")
        return value

    def groups(self, value: Any) -> None:
        for name, members in self.object_of("groups", value).items():
            path: hujson.Path = ("groups", name)
            if not _GROUP.match(name):
                raise self.fail(
                    path, "group name %r must start with group:" % name, 'e.g. "group:eng"', key=True
                )
            users = []
            for i, m in enumerate(self.string_list(path, members, "a group's members")):
                if m.startswith(("group:", "tag:", "autogroup:")):
                    raise self.fail(
                        path + (i,),
                        "a group may only list users, not %r" % m,
                        "list the users themselves, as name@",
                    )
                users.append(self.user(path + (i,), m))
            self.pol.groups[name] = users

    def tag_owners(self, value: Any) -> None:
        owners = self.object_of("tagOwners", value)
        for tag in owners:
            if not _TAG.match(tag):
                raise self.fail(
                    ("tagOwners", tag),
                    "tag %r must be tag: and a name starting with a letter" % tag,
                    'e.g. "tag:server"',
                    key=True,
                )
        for tag, who in owners.items():
            path: hujson.Path = ("tagOwners", tag)
            for i, owner in enumerate(self.string_list(path, who, "a tag's owners")):
                if owner.startswith("group:") and owner not in self.pol.groups:
                    raise self.fail(path + (i,), "group %r is not defined" % owner, 'add it to "groups"')
                if owner.startswith("tag:") and owner not in owners:
                    raise self.fail(path + (i,), "tag %r is not defined" % owner, 'add it to "tagOwners"')
                if not owner.startswith(("group:", "tag:", "autogroup:")):
                    self.user(path + (i,), owner)
            self.pol.tag_owners[tag] = list(who)

    def hosts(self, value: Any) -> None:
        for name, addr in self.object_of("hosts", value).items():
            path: hujson.Path = ("hosts", name)
            if not _HOST.match(name):
                raise self.fail(
                    path,
                    "host name %r is not allowed" % name,
                    "use lowercase letters, digits, '.', '_' and '-'",
                    key=True,
                )
            if not isinstance(addr, str):
                raise self.fail(path, "host %r must be an address string" % name, 'e.g. "100.64.0.7"')
            self.pol.hosts[name] = self.network(path, addr)

    def network(self, path: hujson.Path, text: str) -> IPNetwork:
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError:
            pass
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self.fail(
                path, "%r is not an IP address or prefix" % text, "e.g. 100.64.0.7 or 10.0.0.0/8"
            ) from None
        raise self.fail(path, "prefix %r has host bits set" % text, "write %s" % net)

    def user(self, path: hujson.Path, token: str) -> str:
        name, at, _ = token.partition("@")
        if not at or not _USER.match(name):
            raise self.fail(path, "%r is not a user" % token, "write users as name@ (the meshlet user name)")
        return name

    def acls(self, value: Any) -> list[Rule]:
        if not isinstance(value, list):
            raise self.fail(("acls",), '"acls" must be a list of rules', 'write "acls": [{...}]')
        return [self.rule(("acls", i), r) for i, r in enumerate(value)]

    def rule(self, path: hujson.Path, r: Any) -> Rule:
        if not isinstance(r, dict):
            raise self.fail(
                path, "a rule must be an object", '{"action": "accept", "src": [...], "dst": [...]}'
            )
        for k in r:
            if k not in _ACL_FIELDS:
                raise self.fail(
                    path + (k,),
                    "unknown field %r in a rule" % k,
                    "rules have action, src, dst and proto",
                    key=True,
                )
        if r.get("action") != "accept":
            where = path + ("action",) if "action" in r else path
            raise self.fail(where, 'a rule\'s action must be "accept"', 'add "action": "accept"')
        src_key = "src" if "src" in r or "users" not in r else "users"
        dst_key = "dst" if "dst" in r or "ports" not in r else "ports"
        for k in (src_key, dst_key):
            if k not in r:
                raise self.fail(path, "a rule needs %r" % k, 'add "%s": [...]' % k)
        protos = self.proto(path + ("proto",), r["proto"]) if "proto" in r else []
        src = [
            self.alias(path + (src_key, i), a, dst=False)
            for i, a in enumerate(self.string_list(path + (src_key,), r[src_key], src_key))
        ]
        dst = [
            self.dest(path + (dst_key, i), d, protos)
            for i, d in enumerate(self.string_list(path + (dst_key,), r[dst_key], dst_key))
        ]
        if any(d.alias.kind == "autogroup" and d.alias.name == "autogroup:self" for d in dst):
            for i, a in enumerate(src):
                if a.kind not in ("user", "group") and a.name != "autogroup:member":
                    raise self.fail(
                        path + (src_key, i),
                        "with autogroup:self in dst, %r cannot be a source" % a.name,
                        "use users, groups or autogroup:member",
                    )
        line, _ = self.doc.position(path)
        return Rule(src, dst, protos, line)

    def proto(self, path: hujson.Path, value: Any) -> list[int]:
        if isinstance(value, str) and value.lower() in PROTOCOLS:
            return list(PROTOCOLS[value.lower()])
        if isinstance(value, str) and re.fullmatch(r"0|[1-9][0-9]{0,2}", value) and int(value) <= 255:
            return [int(value)]
        raise self.fail(
            path,
            "unknown protocol %r" % (value,),
            "use tcp, udp, icmp, sctp, ... or a number 0-255 as a string",
        )

    def dest(self, path: hujson.Path, text: str, protos: list[int]) -> Dest:
        host, sep, ports_text = text.rpartition(":")
        if not sep or not host:
            raise self.fail(path, "destination %r has no ports" % text, "write %s:* or %s:22" % (text, text))
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        alias = self.alias(path, host, dst=True)
        ports = self.ports(path, ports_text)
        if protos and not set(protos) <= _PORT_PROTOCOLS and ports != [(0, 65535)]:
            raise self.fail(path, "this protocol has no ports, but %r names some" % text, "write %s:*" % host)
        return Dest(alias, ports)

    def ports(self, path: hujson.Path, text: str) -> list[tuple[int, int]]:
        if text == "*":
            return [(0, 65535)]
        out = []
        for part in text.split(","):
            m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", part)
            first = int(m.group(1)) if m else -1
            last = int(m.group(2)) if m and m.group(2) else first
            if not m or not 0 <= first <= last <= 65535:
                raise self.fail(path, "bad ports %r" % text, "write *, 22, 80,443 or 8000-8099 (0-65535)")
            out.append((first, last))
        return out

    def alias(self, path: hujson.Path, text: str, dst: bool) -> Alias:
        if text == "*":
            return Alias("any", "*")
        if text.startswith("autogroup:"):
            if text == "autogroup:self" and not dst:
                raise self.fail(
                    path, "autogroup:self can only be a destination", "use autogroup:member as the source"
                )
            if text == "autogroup:internet":
                raise self.fail(
                    path, "autogroup:internet needs exit nodes, which meshlet does not have", "remove it"
                )
            if text not in _AUTOGROUPS:
                raise self.fail(
                    path, "unknown autogroup %r" % text, "meshlet knows " + ", ".join(_AUTOGROUPS)
                )
            return Alias("autogroup", text)
        if text.startswith("group:"):
            if text not in self.pol.groups:
                raise self.fail(path, "group %r is not defined" % text, 'add it to "groups"')
            return Alias("group", text)
        if text.startswith("tag:"):
            if text not in self.pol.tag_owners:
                raise self.fail(path, "tag %r is not defined" % text, 'add it to "tagOwners"')
            return Alias("tag", text)
        if "@" in text:
            return Alias("user", self.user(path, text))
        if text in self.pol.hosts:
            return Alias("host", text, self.pol.hosts[text])
        if re.fullmatch(r"[0-9a-fA-F:./]+", text) and any(c in text for c in ".:"):
            return Alias("prefix", text, self.network(path, text))
        raise self.fail(path, "unknown name %r" % text, _ALIAS_HINT)


# -- compiling -------------------------------------------------------------------------


@dataclass
class _Side:
    """A resolved alias set: every node (any), or nodes named by identity plus literal prefixes."""

    any: bool = False
    ids: set[int] = field(default_factory=set)
    """Nodes named by identity (user, group, tag, autogroup)."""
    nets: list[IPNetwork] = field(default_factory=list)
    nodes: set[int] = field(default_factory=set)
    """Every node inside the set: `ids` plus the nodes whose addresses fall in `nets`."""


@dataclass
class _CompiledRule:
    src: _Side
    src_ips: list[str]
    dst: list[tuple[_Side, list[tuple[int, int]]]]
    self_ports: list[tuple[int, int]]
    protos: list[int]


class Compiled:
    """A policy resolved against one set of nodes and users; cheap to query per node."""

    def __init__(self, policy: Policy | None, nodes: Sequence[NodeLike], users: Iterable[UserLike]) -> None:
        self.policy = policy
        self.allow_all = policy is None or policy.acls is None
        self.nodes = {n.id: n for n in nodes}
        self.warnings: list[str] = list(policy.warnings) if policy else []
        self._ips = {n.id: [ip for ip in (n.ipv4, n.ipv6) if ip] for n in nodes}
        self._addrs = {n.id: [ipaddress.ip_address(ip) for ip in self._ips[n.id]] for n in nodes}
        self._user_ids = {u.name: u.id for u in users}
        self._by_user: dict[int, set[int]] = {}
        for n in nodes:
            if not n.tags:
                self._by_user.setdefault(n.user_id, set()).add(n.id)
        self.rules: list[_CompiledRule] = []
        if policy is not None and policy.acls is not None:
            self.rules = [self._compile(policy, r) for r in policy.acls]

    # -- resolution

    def _compile(self, policy: Policy, rule: Rule) -> _CompiledRule:
        src = self._resolve(policy, rule.src, rule.line)
        dst = []
        self_ports: list[tuple[int, int]] = []
        for d in rule.dst:
            if d.alias.name == "autogroup:self":
                self_ports.extend(d.ports)
            else:
                dst.append((self._resolve(policy, [d.alias], rule.line), d.ports))
        return _CompiledRule(src, self._render(src), dst, self_ports, rule.protos)

    def _resolve(self, policy: Policy, aliases: list[Alias], line: int) -> _Side:
        side = _Side()
        for a in aliases:
            if a.kind == "any":
                side.any = True
            elif a.kind in ("host", "prefix"):
                assert a.network is not None
                side.nets.append(a.network)
            elif a.kind == "tag":
                side.ids |= {n.id for n in self.nodes.values() if a.name in n.tags}
            elif a.name == "autogroup:tagged":
                side.ids |= {n.id for n in self.nodes.values() if n.tags}
            elif a.name == "autogroup:member":
                side.ids |= {n.id for n in self.nodes.values() if not n.tags}
            else:
                names = policy.groups[a.name] if a.kind == "group" else [a.name]
                for name in names:
                    uid = self._user_ids.get(name)
                    if uid is None:
                        self._warn("line %d: user %r does not exist (yet); it matches no node" % (line, name))
                    else:
                        side.ids |= self._by_user.get(uid, set())
        side.nodes = set(self.nodes) if side.any else set(side.ids)
        for net in side.nets:
            side.nodes |= {i for i, addrs in self._addrs.items() if any(ip in net for ip in addrs)}
        return side

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def _render(self, side: _Side) -> list[str]:
        if side.any:
            return ["*"]
        ips = {ip for i in side.ids for ip in self._ips.get(i, [])}
        return sorted(ips | {_net_text(n) for n in side.nets}, key=_ip_sort_key)

    # -- per-node queries

    def filter_for(self, node: NodeLike) -> list[dict[str, Any]]:
        """The tailcfg PacketFilter for `node`: the rules that admit traffic to its own addresses."""
        if self.allow_all:
            return copy.deepcopy(ALLOW_ALL)
        mine = [ipaddress.ip_address(ip) for ip in (node.ipv4, node.ipv6) if ip]
        out: list[dict[str, Any]] = []
        for rule in self.rules:
            dsts: list[dict[str, Any]] = []
            for side, ports in rule.dst:
                targets = ["*"] if side.any else self._targets(side, node, mine)
                dsts.extend(_dst(ip, p) for ip in targets for p in ports)
            if dsts and rule.src_ips:
                out.append(_filter_rule(rule.src_ips, dsts, rule.protos))
            if rule.self_ports and not node.tags:
                same = rule.src.nodes & self._by_user.get(node.user_id, set())
                srcs = sorted({ip for i in same for ip in self._ips.get(i, [])}, key=_ip_sort_key)
                targets = [str(ip) for ip in mine]
                if srcs and targets:
                    out.append(
                        _filter_rule(
                            srcs, [_dst(ip, p) for ip in targets for p in rule.self_ports], rule.protos
                        )
                    )
        return out

    def _targets(self, side: _Side, node: NodeLike, mine: list[Any]) -> list[str]:
        """Where `side` covers `node`: its addresses if named by identity, plus each prefix holding one."""
        out = [str(ip) for ip in mine] if node.id in side.ids else []
        out += [_net_text(net) for net in side.nets if any(ip in net for ip in mine)]
        return sorted(set(out), key=_ip_sort_key)

    def can_access(self, src: int, dst: int) -> bool:
        """Whether node `src` may open connections to node `dst`."""
        if self.allow_all:
            return True
        for rule in self.rules:
            if src not in rule.src.nodes:
                continue
            if any(dst in side.nodes for side, _ in rule.dst):
                return True
            if rule.self_ports and self._same_user_untagged(src, dst):
                return True
        return False

    def _same_user_untagged(self, a: int, b: int) -> bool:
        na, nb = self.nodes.get(a), self.nodes.get(b)
        return na is not None and nb is not None and not na.tags and not nb.tags and na.user_id == nb.user_id

    def may_see(self, viewer: int, peer: int) -> bool:
        """Whether `peer` belongs in `viewer`'s netmap: either may reach the other."""
        return viewer != peer and (self.can_access(viewer, peer) or self.can_access(peer, viewer))

    def peers_for(self, viewer: int) -> set[int]:
        """Ids of the nodes `viewer` may see (not itself)."""
        if self.allow_all:
            return set(self.nodes) - {viewer}
        out: set[int] = set()
        v = self.nodes.get(viewer)
        mine_user = self._by_user.get(v.user_id, set()) if v is not None and not v.tags else set()
        for rule in self.rules:
            if viewer in rule.src.nodes:
                for side, _ in rule.dst:
                    out |= side.nodes
                if rule.self_ports:
                    out |= mine_user
            if any(viewer in side.nodes for side, _ in rule.dst):
                out |= rule.src.nodes
            if rule.self_ports and mine_user:
                out |= rule.src.nodes & mine_user
        out.discard(viewer)
        return out


def compile_policy(policy: Policy | None, nodes: Sequence[NodeLike], users: Iterable[UserLike]) -> Compiled:
    """Resolves a checked policy (or None: allow all) against nodes and users."""
    return Compiled(policy, nodes, users)


def _dst(ip: str, ports: tuple[int, int]) -> dict[str, Any]:
    return {"IP": ip, "Ports": {"First": ports[0], "Last": ports[1]}}


def _filter_rule(srcs: list[str], dsts: list[dict[str, Any]], protos: list[int]) -> dict[str, Any]:
    rule: dict[str, Any] = {"SrcIPs": list(srcs), "DstPorts": dsts}
    if protos:
        rule["IPProto"] = list(protos)
    return rule


def _net_text(net: IPNetwork) -> str:
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def _ip_sort_key(text: str) -> tuple[int, int, int]:
    if text == "*":
        return (0, 0, 0)
    net = ipaddress.ip_network(text, strict=False)
    return (net.version, int(net.network_address), net.prefixlen)
