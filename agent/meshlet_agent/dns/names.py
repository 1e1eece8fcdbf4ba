"""The tailnet's names as MagicDNS serves them, built from one NetMap.

Facts mirrored from Tailscale's client (shared/protocol/names.md §3):

* The MagicDNS suffix comes from the self node's own `Name` alone: drop the
  first label (`pi4.meshlet.internal.` -> `meshlet.internal.`). Neither
  `Domain` nor `DNSConfig.Domains` defines it.
* Every node's `Name` maps to its addresses, plus `DNSConfig.ExtraRecords`
  of type "", "A" or "AAAA" whose value is an IP. When the self node has an
  IPv4 address, peers' IPv6 addresses are left out of DNS answers unless the
  self node has the `magicdns-aaaa` capability: Tailscale does this so that
  hosts with half-working IPv6 keep working, and a real Tailscale peer
  behaves the same. `lookup` (for `meshlet ip`) still returns every address.
* With `Proxied` (MagicDNS on) the suffix and the reverse zones of
  100.64.0.0/10 and fd7a:115c:a1e0::/48 are local: unknown names there get
  NXDOMAIN rather than leaking upstream. A `Routes` entry with no resolvers
  is local too; one with resolvers is a split-DNS route.

Bare single-label names: the OS normally appends the search domain before
asking, so `pi-kitchen` arrives as `pi-kitchen.<suffix>`. Some stub
resolvers send the bare name anyway; with MagicDNS on, a bare label equal to
a node's first label is answered as that node (never `localhost`, and never
NXDOMAIN for an unknown bare name, which is forwarded: it may be a TLD).

Everything is kept lower-case with a trailing dot; callers lower-case too.
"""

import ipaddress
import logging

from meshlet.control.netmap import NetMap

log = logging.getLogger("meshlet_agent.dns")

SERVICE_IP4 = "100.100.100.100"
SERVICE_IP6 = "fd7a:115c:a1e0::53"
SERVICE_IPS = frozenset((SERVICE_IP4, SERVICE_IP6))
SERVICE_NAME = "magicdns.localhost-tailscale-daemon."
"""Tailscale's name for the resolver itself; its PTR answers for the service addresses."""
CAP_MAGICDNS_AAAA = "magicdns-aaaa"  # tailcfg.NodeAttrMagicDNSPeerAAAA

REVERSE_ZONES = tuple("%d.100.in-addr.arpa." % i for i in range(64, 128)) + (
    "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.",
)
"""The reverse zones of 100.64.0.0/10 and fd7a:115c:a1e0::/48, local when MagicDNS is on."""

Upstream = tuple[str, int]


def fqdn(name: str) -> str:
    """`name` lower-cased with exactly one trailing dot ("" stays "")."""
    name = name.strip().lower().rstrip(".")
    return name + "." if name else ""


def in_domain(name: str, domain: str) -> bool:
    """True if `name` is `domain` or below it; both FQDNs."""
    return name == domain or name.endswith("." + domain) or domain == "."


def suffix_of(node_name: str) -> str:
    """The MagicDNS suffix from the self node's Name: everything after the first label."""
    name = fqdn(node_name)
    if not name:
        return ""
    labels = name[:-1].split(".")
    return ".".join(labels[1:] if len(labels) > 1 else labels) + "."


def parse_upstream(addr: str) -> "Upstream | None":
    """A tailcfg Resolver `Addr` -> (ip, port); None for DoH/other URLs and for quad-100 itself.

    Accepts "1.1.1.1", "1.1.1.1:5353", "2606:4700::1111", "[2606:4700::1111]:53".
    """
    addr = addr.strip()
    if not addr or "://" in addr:
        return None
    port = 53
    host = addr
    if addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        if not sep:
            return None
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif addr.count(":") == 1:
        host, _, p = addr.partition(":")
        if not p.isdigit():
            return None
        port = int(p)
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if not 0 < port < 65536 or str(ip) in SERVICE_IPS:
        return None
    return (host if "%" in host else str(ip), port)


def reverse_name_ip(name: str) -> "str | None":
    """`4.3.2.1.in-addr.arpa.` -> "1.2.3.4"; a 32-nibble ip6.arpa name -> the IPv6 text; else None."""
    if name.endswith(".in-addr.arpa."):
        parts = name[: -len(".in-addr.arpa.")].split(".")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            return None
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        except ValueError:
            return None
    if name.endswith(".ip6.arpa."):
        nibbles = name[: -len(".ip6.arpa.")].split(".")
        if len(nibbles) != 32 or not all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
            return None
        return str(ipaddress.IPv6Address(bytes.fromhex("".join(reversed(nibbles)))))
    return None


def _ip_of(prefix: str) -> "str | None":
    try:
        return str(ipaddress.ip_interface(prefix.strip()).ip)
    except ValueError:
        return None


def _is_v6(ip: str) -> bool:
    return ":" in ip


class NameTable:
    """What one NetMap says about names; immutable once built, replaced whole on change."""

    def __init__(self) -> None:
        self.suffix = ""  # "meshlet.internal." or "" before the first netmap
        self.magic_dns = False  # DNSConfig.Proxied
        self.search_domains: list[str] = []  # DNSConfig.Domains, no trailing dots
        self.local_domains: list[str] = []  # answered here only: NXDOMAIN for unknown names
        self.routes: list[tuple[str, list[Upstream]]] = []  # split DNS, longest suffix first
        self.default_upstreams: list[Upstream] = []  # DNSConfig.Resolvers
        self.dns_hosts: dict[str, list[str]] = {}  # FQDN -> addresses DNS answers with
        self.all_hosts: dict[str, list[str]] = {}  # FQDN -> every address (for `meshlet ip`)
        self.short: dict[str, str] = {}  # first label -> FQDN, for tailnet nodes under the suffix
        self.ptr: dict[str, str] = {}  # address -> FQDN
        self.node_names: list[str] = []  # FQDNs of self and peers, self first

    @classmethod
    def from_netmap(cls, nm: NetMap) -> "NameTable":
        t = cls()
        me = nm.self_node
        cfg = nm.dns_config or {}
        t.suffix = suffix_of(me.name) if me is not None else ""
        t.magic_dns = cfg.get("Proxied") is True
        t.search_domains = [d.strip().rstrip(".") for d in _strs(cfg.get("Domains")) if d.strip(".")]
        t.default_upstreams = _upstreams(cfg.get("Resolvers"))
        self_has_v4 = me is not None and any(not _is_v6(ip) for ip in _ips(me.addresses))
        peer_aaaa = me is not None and (not self_has_v4 or CAP_MAGICDNS_AAAA in me.cap_map)
        nodes = ([me] if me is not None else []) + sorted(nm.peers.values(), key=lambda n: n.node_id)
        for i, node in enumerate(nodes):
            name = fqdn(node.name)
            if not name or name in t.all_hosts:
                continue
            ips = _ips(node.addresses)
            t.node_names.append(name)
            t.all_hosts[name] = ips
            t.dns_hosts[name] = ips if i == 0 or peer_aaaa else [ip for ip in ips if not _is_v6(ip)]
            for ip in ips:
                t.ptr.setdefault(ip, name)
            if t.suffix and name.endswith("." + t.suffix):
                label = name[: -len(t.suffix) - 1]
                if "." not in label and label != "localhost":
                    t.short.setdefault(label, name)
        for rec in _dicts(cfg.get("ExtraRecords")):
            name = fqdn(str(rec.get("Name") or ""))
            typ = rec.get("Type") or ""
            value = rec.get("Value")
            extra = _ip_of(value) if isinstance(value, str) and "/" not in value else None
            if not name or typ not in ("", "A", "AAAA") or extra is None:
                continue
            if (typ == "A" and _is_v6(extra)) or (typ == "AAAA" and not _is_v6(extra)):
                continue
            for table in (t.dns_hosts, t.all_hosts):
                table.setdefault(name, [])
                if extra not in table[name]:
                    table[name].append(extra)
            t.ptr.setdefault(extra, name)
        if t.magic_dns and t.suffix:
            t.local_domains.append(t.suffix)
            t.local_domains.extend(REVERSE_ZONES)
        routes = cfg.get("Routes")
        if isinstance(routes, dict):
            for key, resolvers in routes.items():
                domain = fqdn(key) if isinstance(key, str) else ""
                if not domain:
                    continue
                ups = _upstreams(resolvers)
                if not resolvers:
                    t.local_domains.append(domain)
                elif ups:
                    t.routes.append((domain, ups))
                else:
                    log.warning(
                        "DNS route %s has only resolvers meshlet cannot use (DoH?); using the defaults", key
                    )
        t.routes.sort(key=lambda r: -len(r[0]))
        return t

    def upstreams_for(self, name: str) -> "list[Upstream] | None":
        """The split-DNS route's resolvers for `name`, the default ones, or None (use the OS's)."""
        for domain, ups in self.routes:
            if in_domain(name, domain):
                return ups
        return self.default_upstreams or None

    def is_local(self, name: str) -> bool:
        return any(in_domain(name, d) for d in self.local_domains)

    def resolve_name(self, name: str) -> "str | None":
        """The FQDN a query name stands for here (itself, or a bare node label), or None."""
        if name in self.dns_hosts:
            return name
        if self.magic_dns and name.count(".") == 1:
            return self.short.get(name[:-1])
        return None


def _strs(v: object) -> list[str]:
    return [s for s in v if isinstance(s, str)] if isinstance(v, list) else []


def _dicts(v: object) -> "list[dict[str, object]]":
    return [d for d in v if isinstance(d, dict)] if isinstance(v, list) else []


def _ips(prefixes: list[str]) -> list[str]:
    out: list[str] = []
    for p in prefixes:
        ip = _ip_of(p)
        if ip is not None and ip not in out:
            out.append(ip)
    return out


def _upstreams(v: object) -> list[Upstream]:
    out: list[Upstream] = []
    for d in _dicts(v):
        addr = d.get("Addr")
        up = parse_upstream(addr) if isinstance(addr, str) else None
        if up is not None and up not in out:
            out.append(up)
    return out
