"""Registration: what a /machine/register request does to the state (headscale v0.28's auth.go).

`State.register()` is the entry point; this module holds its decisions
(shared/protocol/control.md §6.3), in this order:

| request | outcome |
| --- | --- |
| `requested_expiry_ms` in the past | logout: the node's key expires now; an ephemeral node is deleted |
| node key held by another machine | error "node key already in use by another machine" |
| no auth key, node key known, not expired | the node as it is (a restart) |
| no auth key, node key known, expired | the node; the reply says NodeKeyExpired and the client rotates |
| no auth key, `old_node_key` = current key, not expired | seamless key rotation, expiry renewed |
| no auth key, unknown machine | a pending node and an `auth_url`; `nodes approve ID` admits it |
| no auth key, known machine, new node key | back to pending (announced as node_removed), an `auth_url` |
| auth key, same machine, same owner, same node key, not expired | accepted without checking the key: restarts work with a spent or expired single-use key |
| auth key, otherwise | the key must exist ("invalid authkey"), not be expired ("authkey expired") and not be spent ("authkey already used"); then the node is created, or updated in place (node key rotation, re-authorisation) |

The error strings are headscale's, and the client shows them to its user.
A machine has at most one node: a known machine presenting another user's
key moves to that user, keeping its name and addresses; a tagged key turns
an untagged node into a tagged one. Pending (interactive) registrations are
capped at MAX_PENDING and dropped by `State.tick()` when not approved in time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshlet.key import MachinePublic, NodePublic

from .state import MAX_PENDING, Change, Node, PreAuthKey, RegisterResult, merge_hostinfo

if TYPE_CHECKING:
    from .state import State

log = logging.getLogger("meshlet_control.auth")


@dataclass(frozen=True)
class Request:
    """The parts of a RegisterRequest that matter here, plus the Noise session's machine key."""

    machine_key: MachinePublic
    node_key: NodePublic
    old_node_key: NodePublic | None
    auth_key: str
    hostinfo: dict[str, Any]
    requested_expiry_ms: int
    followup: str
    ephemeral: bool
    capver: int
    now_ms: int


def register(st: State, req: Request) -> RegisterResult:
    if req.requested_expiry_ms and req.requested_expiry_ms <= req.now_ms:
        return _logout(st, req)
    holder = st.node_by_node_key(req.node_key)
    if holder is not None and holder.machine_key != req.machine_key:
        return RegisterResult(None, error="node key already in use by another machine")
    existing = st.node_by_machine(req.machine_key)
    if req.auth_key:
        return _with_key(st, req, existing)
    return _interactive(st, req, existing)


def auth_url(st: State, node: Node) -> str:
    return "%s/register/%d" % (st.server_url, node.id)


def _logout(st: State, req: Request) -> RegisterResult:
    node = st.node_by_node_key(req.node_key)
    if node is None:
        return RegisterResult(None, logged_out=True)
    if node.machine_key != req.machine_key:
        return RegisterResult(None, error="node key belongs to another machine")
    if node.ephemeral:
        st._delete(node, {"reason": "logout"})
        return RegisterResult(node, logged_out=True)
    return RegisterResult(st._expire_now(node, req.now_ms), logged_out=True)


def _interactive(st: State, req: Request, existing: Node | None) -> RegisterResult:
    if existing is not None and existing.node_key == req.node_key:
        if not existing.authorized:
            return RegisterResult(existing, auth_url=auth_url(st, existing))
        return RegisterResult(existing)  # a restart; an expired node learns it from the reply
    old = req.old_node_key
    if (
        existing is not None
        and existing.authorized
        and old is not None
        and not old.is_zero()
        and existing.node_key == old
        and not existing.is_expired(req.now_ms)
    ):
        changes = {
            "node_key": req.node_key,
            "capver": req.capver or existing.capver,
            "hostinfo": merge_hostinfo(existing.hostinfo, req.hostinfo),
            "expiry_ms": st._expiry_for(existing.tags, req.requested_expiry_ms, req.now_ms),
        }
        return RegisterResult(st._update(existing, changes))
    if existing is not None:
        cols = {
            "node_key": req.node_key,
            "hostinfo": merge_hostinfo(existing.hostinfo, req.hostinfo),
            "authorized": False,
        }
        node = st._update(existing, cols, announce=False)
        if existing.authorized:
            st._emit(Change("node_removed", node.id, {"authorized": False}))
        return RegisterResult(node, auth_url=auth_url(st, node))
    if sum(1 for n in st.list_nodes() if not n.authorized) >= MAX_PENDING:
        return RegisterResult(None, error="too many registrations wait for approval; try again later")
    node = st._create(
        req.machine_key,
        req.node_key,
        req.hostinfo,
        user_id=st.default_user().id,
        tags=[],
        ephemeral=req.ephemeral,
        expiry_ms=0,
        pak=None,
        capver=req.capver,
        authorized=False,
    )
    log.info("auth: node %d (%s) waits: meshlet-control nodes approve %d", node.id, node.hostname, node.id)
    return RegisterResult(node, auth_url=auth_url(st, node), created=True)


def _with_key(st: State, req: Request, existing: Node | None) -> RegisterResult:
    pak = st._lookup_auth_key(req.auth_key)
    if pak is None:
        return RegisterResult(None, error="invalid authkey")
    if existing is not None:
        same_owner = bool(existing.tags and pak.tags) or (not pak.tags and existing.user_id == pak.user_id)
        converting = bool(pak.tags) and not existing.tags
        refresh_only = (
            existing.authorized
            and same_owner
            and existing.node_key == req.node_key
            and not existing.is_expired(req.now_ms)
            and not converting
        )
        if not refresh_only and (problem := pak.problem(req.now_ms)):
            return RegisterResult(None, error=problem)
        return RegisterResult(_readmit(st, existing, pak, req))
    problem = pak.problem(req.now_ms)
    if problem:
        return RegisterResult(None, error=problem)
    node = st._create(
        req.machine_key,
        req.node_key,
        req.hostinfo,
        user_id=pak.user_id,
        tags=pak.tags,
        ephemeral=pak.ephemeral or req.ephemeral,
        expiry_ms=st._expiry_for(pak.tags, req.requested_expiry_ms, req.now_ms),
        pak=pak,
        capver=req.capver,
        authorized=True,
    )
    return RegisterResult(node, created=True)


def _readmit(st: State, node: Node, pak: PreAuthKey, req: Request) -> Node:
    """Updates a known machine's node in place from a key: rotation, re-authorisation, a new owner."""
    cols: dict[str, Any] = {
        "node_key": req.node_key,
        "hostinfo": merge_hostinfo(node.hostinfo, req.hostinfo),
        "auth_key_id": pak.id,
        "authorized": True,
        "capver": req.capver or node.capver,
    }
    tags = node.tags
    if pak.tags and not node.tags:
        cols["tags"] = tags = list(pak.tags)
    elif not pak.tags and node.user_id != pak.user_id:
        cols["user_id"] = pak.user_id
    if not node.ipv4:
        cols["ipv4"], cols["ipv6"] = st._allocate()
    cols["expiry_ms"] = st._expiry_for(tags, req.requested_expiry_ms, req.now_ms)
    with st.db.transaction():
        st._use_key(pak)
        updated, change = st._apply(node, cols)
    if not node.authorized:
        st._emit(Change("node_added", updated.id))
    elif change is not None:
        st._emit(change)
    return updated
