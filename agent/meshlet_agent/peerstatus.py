"""A NetMap's nodes as `meshlet status` shows them: names, addresses, and `tailscale status --json`'s peer shape.

Pure functions of the netmap (and the data plane's per-peer counters), shared
by the Backend's `status`, `ip`, `ping` and `whois`.
"""

from typing import Any

from meshlet.control.netmap import NetMap, Node

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, as tailscale prints "never"


def node_ips(node: Node) -> list[str]:
    """The node's tailnet addresses without prefix lengths, IPv4 first."""
    ips = [a.partition("/")[0] for a in node.addresses]
    return sorted(ips, key=lambda a: (":" in a, ips.index(a)))


def short_name(node: Node) -> str:
    """The first label of the MagicDNS name (`pi-kitchen`), else the host name."""
    if node.name:
        return node.name.split(".", 1)[0]
    return hostinfo_text(node, "Hostname")


def magic_dns_suffix(nm: NetMap) -> str:
    """The tailnet's domain, from the self node's name (`pi.tail.example.` -> `tail.example`)."""
    if nm.self_node is None or "." not in nm.self_node.name.rstrip("."):
        return ""
    return nm.self_node.name.rstrip(".").split(".", 1)[1]


def hostinfo_text(node: Node, field: str) -> str:
    v = node.hostinfo.get(field)
    return v if isinstance(v, str) else ""


def node_tags(node: Node) -> list[str]:
    v = node.hostinfo.get("RequestTags")
    return [t for t in v if isinstance(t, str)] if isinstance(v, list) else []


def region_code(nm: "NetMap | None", region: int) -> str:
    if not region:
        return ""
    if nm is not None and region in nm.derp_regions and nm.derp_regions[region].code:
        return nm.derp_regions[region].code
    return str(region)


def peer_status(node: Node, dp: dict[str, Any], nm: "NetMap | None" = None) -> dict[str, Any]:
    relay = dp.get("Relay") or region_code(nm, node.home_derp)
    return {
        "ID": str(node.node_id),
        "PublicKey": node.key.to_text(),
        "HostName": hostinfo_text(node, "Hostname") or short_name(node),
        "DNSName": node.name,
        "OS": hostinfo_text(node, "OS"),
        "UserID": node.user,
        "TailscaleIPs": node_ips(node),
        "Online": bool(dp.get("Online", node.online)),
        "Active": bool(dp.get("Active", False)),
        "Relay": relay,
        "CurAddr": dp.get("CurAddr") or "",
        "RxBytes": int(dp.get("RxBytes") or 0),
        "TxBytes": int(dp.get("TxBytes") or 0),
        "LastHandshake": dp.get("LastHandshake") or ZERO_TIME,
        "KeyExpiry": node.key_expiry,
        "Tags": node_tags(node),
    }
