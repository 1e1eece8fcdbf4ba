"""The JSON spellings of Tailscale's tailcfg types that the control server reads and writes.

Go's encoding/json decides what a Tailscale client accepts, so this module
pins the few encodings that bite (shared/protocol/control.md §2):

| Go type          | JSON                                                            |
| ---------------- | --------------------------------------------------------------- |
| key.NodePublic   | "nodekey:<64 lowercase hex>" (also mkey:, discokey:, chalpub:)  |
| netip.Prefix     | "100.64.0.1/32", "fd7a:115c:a1e0::1/128"                        |
| netip.AddrPort   | "1.2.3.4:41641", "[2001:db8::1]:41641"                          |
| time.Time        | RFC 3339 with optional fraction; zero = "0001-01-01T00:00:00Z"  |
| map[int]T        | an object with decimal-string keys                              |

An empty string in a key field makes the Go client reject the *whole*
message, so a missing key is an omitted field, never "". Incoming JSON is
read laxly (unknown fields ignored, Go's case-insensitive field matching is
not needed because Tailscale clients always send the canonical names).
"""

from __future__ import annotations

import datetime
import json
from typing import Any, TypeVar

from meshlet.errors import RemoteProtocolError
from meshlet.key import DiscoPublic, MachinePublic, NodePublic

# --- specification constants -------------------------------------------------------

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's time.Time{} (control.md §2)
LEGACY_DERP_IP = "127.3.3.40"  # Node.DERP = "127.3.3.40:<region>" for capver < 111 (§8.1)
FILTER_ALLOW_ALL: list[dict[str, Any]] = [
    {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}
]  # tailcfg.FilterAllowAll, what headscale sends with no policy (§9.2)
KEEPALIVE = {"KeepAlive": True}  # the keep-alive MapResponse (§7.3)

# Node capabilities (CapMap keys) the self node gets (§8.2).
CAP_IS_ADMIN = "https://tailscale.com/cap/is-admin"
CAP_FILE_SHARING = "https://tailscale.com/cap/file-sharing"

K = TypeVar("K", NodePublic, DiscoPublic, MachinePublic)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def json_bytes(obj: Any) -> bytes:
    """Compact JSON, as Go writes it (no spaces); non-ASCII stays UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def go_time(ms: int) -> str:
    """Unix milliseconds as Go's JSON time; 0 is the zero time ("never" for KeyExpiry)."""
    if ms == 0:
        return ZERO_TIME
    t = _EPOCH + datetime.timedelta(milliseconds=ms)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += (".%03d" % (t.microsecond // 1000)).rstrip("0")
    return text + "Z"


def parse_go_time(value: Any, field: str) -> int:
    """Go's JSON time (or null / absent) as Unix milliseconds; the zero time is 0.

    A time before 1970 other than the zero time comes out negative, which
    still reads as "in the past" (the client's logout sends Unix 123 s).

    Raises:
        RemoteProtocolError("bad_json"): not a time.
    """
    if value is None or value == ZERO_TIME:
        return 0
    if not isinstance(value, str):
        raise RemoteProtocolError("bad_json", "%s is not a time" % field)
    try:
        t = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise RemoteProtocolError("bad_json", "%s is not an RFC 3339 time" % field) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    if t.year == 1:  # the zero time with another offset or fraction
        return 0
    delta = t - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_key(cls: type[K], value: Any, field: str, required: bool = True) -> K | None:
    """A typed key from its text form; None when absent/null (if allowed) or the zero key.

    Raises:
        RemoteProtocolError("bad_json"): missing though required, or malformed.
    """
    if value is None or value == "":
        if required:
            raise RemoteProtocolError("bad_json", "%s is missing" % field)
        return None
    if not isinstance(value, str):
        raise RemoteProtocolError("bad_json", "%s is not a key" % field)
    try:
        key = cls.from_text(value)
    except RemoteProtocolError:
        raise RemoteProtocolError("bad_json", "%s is not a %s key" % (field, cls.PREFIX)) from None
    if key.is_zero():
        if required:
            raise RemoteProtocolError("bad_json", "%s is the zero key" % field)
        return None
    return key


def request_version_and_node_key(doc: dict[str, Any]) -> tuple[int, NodePublic]:
    """The capability version and the node key that RegisterRequest and MapRequest both carry.

    Raises:
        RemoteProtocolError("bad_json"): NodeKey is missing or malformed.
    """
    version = doc.get("Version", 0)
    node_key = parse_key(NodePublic, doc.get("NodeKey"), "NodeKey")
    assert node_key is not None  # required=True never returns None
    return (version if isinstance(version, int) else 0), node_key


def parse_object(body: bytes, what: str) -> dict[str, Any]:
    """A request body that must be one JSON object.

    Raises:
        RemoteProtocolError("bad_json").
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RemoteProtocolError("bad_json", "%s is not JSON" % what) from None
    if not isinstance(doc, dict):
        raise RemoteProtocolError("bad_json", "%s is not a JSON object" % what)
    return doc


def get_dict(doc: dict[str, Any], field: str) -> dict[str, Any]:
    """doc[field] if it is an object, else {} (absent, null or the wrong type)."""
    value = doc.get(field)
    return value if isinstance(value, dict) else {}


def get_str_list(doc: dict[str, Any], field: str) -> list[str] | None:
    """doc[field] as a list of strings, None if absent/null; non-strings are dropped."""
    value = doc.get(field)
    if not isinstance(value, list):
        return None
    return [v for v in value if isinstance(v, str)]


def prefix(addr: str) -> str:
    """An address as a single-host prefix ("100.64.0.1" -> "100.64.0.1/32"); prefixes pass through."""
    if "/" in addr:
        return addr
    return addr + ("/128" if ":" in addr else "/32")


def legacy_derp(region_id: int) -> str:
    """The pre-HomeDERP spelling of a home region, "127.3.3.40:<region>" (control.md §8.1)."""
    return "%s:%d" % (LEGACY_DERP_IP, region_id)
