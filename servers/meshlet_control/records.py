"""The values the control server's State hands out, and how they map to database rows.

`User`, `PreAuthKey` and `Node` are frozen snapshots: State replaces a node
in its cache with a new `Node` on every change, so a caller may keep one
without it moving underneath. The row readers and `node_columns` are the
only place that knows how a field is stored (db.py has the schema): keys as
their text form, lists and dicts as compact JSON, booleans as 0/1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meshlet.key import DiscoPublic, MachinePublic, NodePublic

from . import names
from .db import Row

TAGGED_DEVICES_ID = 2147455555  # headscale's id for its "tagged-devices" user


class StateError(Exception):
    """An operation cannot be done; the message names the problem and the fix."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    display_name: str
    created_ms: int


TAGGED_DEVICES = User(TAGGED_DEVICES_ID, "tagged-devices", "Tagged Devices", 0)


@dataclass(frozen=True)
class PreAuthKey:
    """A pre-auth key. `key` is the whole secret only when just created; listings show `<prefix>-***`."""

    id: int
    key: str
    user_id: int
    reusable: bool
    ephemeral: bool
    tags: list[str]
    expiry_ms: int
    used: bool
    created_ms: int
    prefix: str = ""

    def is_expired(self, now_ms: int) -> bool:
        return self.expiry_ms != 0 and self.expiry_ms <= now_ms

    def problem(self, now_ms: int) -> str | None:
        """Why the key cannot admit a new node (headscale's words), or None."""
        if self.is_expired(now_ms):
            return "authkey expired"
        if self.used and not self.reusable:
            return "authkey already used"
        return None


@dataclass(frozen=True)
class Node:
    """A node as the map side sees it. Treat it (and its lists and dicts) as read-only."""

    id: int
    stable_id: str
    user_id: int
    hostname: str
    fqdn: str
    machine_key: MachinePublic
    node_key: NodePublic
    disco_key: DiscoPublic | None
    ipv4: str
    ipv6: str
    endpoints: list[str]
    home_derp: int
    hostinfo: dict[str, Any]
    tags: list[str]
    ephemeral: bool
    created_ms: int
    last_seen_ms: int
    online: bool
    expiry_ms: int
    authorized: bool
    auth_key_id: int | None
    capver: int = 0

    def is_expired(self, now_ms: int) -> bool:
        return self.expiry_ms != 0 and self.expiry_ms <= now_ms

    @property
    def addresses(self) -> list[str]:
        """tailcfg `Addresses`: `["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]` (empty while pending)."""
        return ([self.ipv4 + "/32"] if self.ipv4 else []) + ([self.ipv6 + "/128"] if self.ipv6 else [])


@dataclass(frozen=True)
class RegisterResult:
    """What /machine/register answers. `logged_out`: reply NodeKeyExpired, MachineAuthorized false."""

    node: Node | None
    error: str | None = None
    auth_url: str | None = None
    created: bool = False
    logged_out: bool = False


def user_from_row(r: Row) -> User:
    return User(int(r["id"]), r["name"], r["display_name"], int(r["created_ms"]))


def key_from_row(r: Row) -> PreAuthKey:
    return PreAuthKey(
        id=int(r["id"]),
        key=r["prefix"] + "-***",
        user_id=int(r["user_id"]),
        reusable=bool(r["reusable"]),
        ephemeral=bool(r["ephemeral"]),
        tags=json.loads(r["tags"]),
        expiry_ms=int(r["expiry_ms"]),
        used=bool(r["used"]),
        created_ms=int(r["created_ms"]),
        prefix=r["prefix"],
    )


def node_from_row(r: Row, base_domain: str) -> Node:
    return Node(
        id=int(r["id"]),
        stable_id=r["stable_id"],
        user_id=int(r["user_id"]),
        hostname=r["hostname"],
        fqdn=names.fqdn(r["hostname"], base_domain),
        machine_key=MachinePublic.from_text(r["machine_key"]),
        node_key=NodePublic.from_text(r["node_key"]),
        disco_key=DiscoPublic.from_text(r["disco_key"]) if r["disco_key"] else None,
        ipv4=r["ipv4"] or "",
        ipv6=r["ipv6"] or "",
        endpoints=json.loads(r["endpoints"]),
        home_derp=int(r["home_derp"]),
        hostinfo=json.loads(r["hostinfo"]),
        tags=json.loads(r["tags"]),
        ephemeral=bool(r["ephemeral"]),
        created_ms=int(r["created_ms"]),
        last_seen_ms=int(r["last_seen_ms"]),
        online=bool(r["online"]),
        expiry_ms=int(r["expiry_ms"]),
        authorized=bool(r["authorized"]),
        auth_key_id=None if r["auth_key_id"] is None else int(r["auth_key_id"]),
        capver=int(r["capver"]),
    )


def merge_hostinfo(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The new Hostinfo, keeping the old NetInfo when the client left it out (it sends it only on change)."""
    merged = dict(new)
    if "NetInfo" not in merged and "NetInfo" in old:
        merged["NetInfo"] = old["NetInfo"]
    return merged


def node_columns(values: dict[str, Any]) -> dict[str, Any]:
    """Node field values -> database column values."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k in ("machine_key", "node_key", "disco_key"):
            out[k] = None if v is None else v.to_text()
        elif k in ("endpoints", "hostinfo", "tags"):
            out[k] = json.dumps(v, separators=(",", ":"))
        elif k in ("ipv4", "ipv6"):
            out[k] = v or None
        elif isinstance(v, bool):
            out[k] = int(v)
        else:
            out[k] = v
    return out
