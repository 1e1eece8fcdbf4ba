"""What a node asks control: tailcfg.RegisterRequest and MapRequest, as JSON-ready dicts.

Pure builders, no I/O, so the asyncio agent and the firmware send the same
documents (shared/protocol/control.md §6.1, §7.1, §7.2, §14). The server's
reading of them is its own (servers/meshlet_control): it must accept what
any Tailscale client sends, not only these.

    register_request(...)  POST /machine/register: a pre-auth key, an
                           interactive login and its Followup, a key renewal
                           (OldNodeKey) or a logout (Expiry in the past)
    map_request(...)       POST /machine/map: the long poll (Stream: true) or
                           a lite update (Stream: false, OmitPeers: true)
"""

from .._compat import TYPE_CHECKING
from .base import PROTOCOL_VERSION

if TYPE_CHECKING:
    from typing import Any

    from ..key import DiscoPublic, NodePrivate, NodePublic

# --- specification constants (control.md §6, §7) ------------------------------

CAPABILITY_VERSION = PROTOCOL_VERSION  # 130, Tailscale v1.90
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time: no expiry requested
LOGOUT_TIME = (
    "1970-01-01T00:02:03Z"  # `tailscale logout` asks for Expiry = Unix 123: a time in the past (§6.1)
)
ENDPOINT_TYPE_LOCAL = 1  # tailcfg.EndpointType: 1 local, 2 STUN, ...


def _zero_node_key() -> str:
    return "nodekey:" + "0" * 64


def register_request(
    node: "NodePrivate",
    auth_key: "str | None",
    hostinfo: "dict[str, Any]",
    ephemeral: bool = False,
    *,
    old_node_key: "NodePublic | None" = None,
    expiry: str = ZERO_TIME,
    followup: str = "",
) -> "dict[str, Any]":
    """A tailcfg.RegisterRequest as tsnet 1.90 sends it (control.md §6.1, §14).

    Args:
        old_node_key: the key this one replaces (key renewal, re-authentication).
        expiry: the requested key expiry, RFC 3339; LOGOUT_TIME (in the past) logs out.
        followup: the AuthURL of an earlier answer: wait for the interactive login.
    """
    doc: "dict[str, Any]" = {
        "Version": CAPABILITY_VERSION,
        "NodeKey": node.public().to_text(),
        "OldNodeKey": old_node_key.to_text() if old_node_key is not None else _zero_node_key(),
        "Expiry": expiry,
        "Followup": followup,
        "Hostinfo": hostinfo,
    }
    if auth_key is not None:
        doc["Auth"] = {"AuthKey": auth_key}
    if ephemeral:
        doc["Ephemeral"] = True
    return doc


def map_request(
    node: "NodePrivate",
    disco: "DiscoPublic",
    stream: bool,
    endpoints: "list[str]",
    hostinfo: "dict[str, Any]",
    home_derp: int = 0,
    endpoint_types: "list[int] | None" = None,
) -> "dict[str, Any]":
    """A tailcfg.MapRequest: the long poll (stream) or a lite update (control.md §7.1, §7.2)."""
    hi = dict(hostinfo)
    if home_derp:
        net_info = dict(hi.get("NetInfo") or {})
        net_info["PreferredDERP"] = home_derp
        hi["NetInfo"] = net_info
    return {
        "Version": CAPABILITY_VERSION,
        "Compress": "zstd",
        "KeepAlive": True,
        "NodeKey": node.public().to_text(),
        "DiscoKey": disco.to_text(),
        "Stream": stream,
        "OmitPeers": not stream,
        "Hostinfo": hi,
        "Endpoints": list(endpoints),
        "EndpointTypes": list(endpoint_types or [ENDPOINT_TYPE_LOCAL] * len(endpoints)),
    }
