"""Where a DERP map's regions are: relay URLs and netcheck targets (Tailscale's tailcfg.DERPNode fields).

Pure functions of the netmap's `DERPRegion`s, shared by the per-region
clients (derpregions.py) and netcheck (magicendpoints.py).
"""

import socket
from collections.abc import Mapping

from meshlet.control.netmap import DERPRegion

from . import netcheck

HTTP_DERP_PORT = 3340
"""Tailscale's plain-HTTP DERP port when DERPPort is 0 (TS_DEBUG_USE_DERP_HTTP)."""


def ip_literal(text: object) -> str | None:
    """A DERP node's IPv4/IPv6 field if it is an address ("" and "none" are not)."""
    if not isinstance(text, str) or not text or text == "none":
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return text
        except OSError:
            pass
    return None


def _int_field(node: Mapping[str, object], name: str) -> int:
    v = node.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def derp_nodes(region: DERPRegion) -> list[Mapping[str, object]]:
    """The region's nodes that relay (STUNOnly nodes only answer STUN)."""
    return [n for n in region.nodes if not n.get("STUNOnly")]


def derp_url(node: Mapping[str, object], http: bool) -> str:
    """Tailscale's URL for a DERP node: https://HostName[:DERPPort]/derp (http:// with `http`)."""
    host = str(node.get("HostName") or ip_literal(node.get("IPv4")) or "")
    if ":" in host:
        host = "[%s]" % host
    port = _int_field(node, "DERPPort")
    if http:
        return "http://%s:%d/derp" % (host, port or HTTP_DERP_PORT)
    return "https://%s/derp" % host if port in (0, 443) else "https://%s:%d/derp" % (host, port)


def region_target(region: DERPRegion, http: bool) -> netcheck.RegionTarget:
    """What netcheck probes in a region: every node's STUN port (IPv4 literals only), the first
    relaying node for HTTPS."""
    stun_addrs: list[tuple[str, int]] = []
    for node in region.nodes:
        port = _int_field(node, "STUNPort")
        ip = ip_literal(node.get("IPv4"))
        if port >= 0 and ip is not None and ":" not in ip:
            stun_addrs.append((ip, port or 3478))
    relays = derp_nodes(region)
    first = relays[0] if relays else {}
    port = _int_field(first, "DERPPort") or (HTTP_DERP_PORT if http else 443)
    return netcheck.RegionTarget(
        region.region_id,
        stun_addrs,
        host=str(first.get("HostName") or ""),
        https_port=port,
        tls=not http,
        insecure=bool(first.get("InsecureForTests")),
        dial_host=ip_literal(first.get("IPv4")),
    )
