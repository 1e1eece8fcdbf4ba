"""The control server's state: users, pre-auth keys, nodes and the policy, in SQLite with a cache in memory.

Theory of operation. `State` owns one database connection (db.py) and keeps
every user and node in memory, so the map side reads without SQL; every
change is written through to the database in a transaction, then announced
to subscribers as a `Change`. The clock is injected (`now_ms`), times are
Unix milliseconds, and nothing here is async: the asyncio shell calls in from
the event loop (State is not thread-safe) and turns callbacks into queue puts.

The kinds of `Change` and their fields are listed in changes.py.

Registration (`register()`) follows headscale v0.28; its decision table is
in auth.py.

Tagged keys make tagged nodes: their key never expires, and their owner is
the tags (`owner()` returns the special "tagged-devices" user, as headscale
does), though `user_id` remembers who created the key. Ephemeral nodes (from an
ephemeral key, or a request marked ephemeral as tsnet sends) are deleted
`ephemeral_timeout_ms` after going offline (headscale's default is 30 min;
tests use 30 s) by `tick()`, which the shell calls about once a second.

Admin commands run in other processes on the same file. `refresh()` notices
their commits (SQLite's `PRAGMA data_version`), reloads, and announces the
difference; the shell calls it about once a second.

State is assembled from one module per job; ChangeFeed, NodeStore,
Presence and PreAuthKeys are its base classes, over the attributes set
here (in `__init__` and `_load`):

| module | what |
| --- | --- |
| records.py | the values handed out (User, PreAuthKey, Node, RegisterResult) and their rows |
| changes.py | `Change`, the subscribers (`subscribe`), the diff after another process's commit |
| nodestore.py | the node cache and every node write (`_create`, `_apply`, `_delete`, ...) |
| presence.py | map-side updates (endpoints, online) and `tick()` |
| preauthkeys.py | pre-auth keys: format, hashing, create, list, expire, look up |
| state.py | the whole: loading, users, registration, admin commands, the policy, meta |
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable

from meshlet.key import MachinePublic, NodePublic

from . import names
from . import policy as policy_mod
from .changes import Change, diff
from .db import Database
from .ipalloc import IPAllocator
from .preauthkeys import KEY_PREFIX, PreAuthKeys
from .presence import Presence
from .records import (
    TAGGED_DEVICES,
    TAGGED_DEVICES_ID,
    Node,
    PreAuthKey,
    RegisterResult,
    StateError,
    User,
    merge_hostinfo,
    node_from_row,
    user_from_row,
)

# The names callers import from here (they live in the modules above).
__all__ = [
    "DEFAULT_BASE_DOMAIN",
    "DEFAULT_USER",
    "KEY_PREFIX",
    "MAX_PENDING",
    "TAGGED_DEVICES",
    "TAGGED_DEVICES_ID",
    "Change",
    "Node",
    "PreAuthKey",
    "RegisterResult",
    "State",
    "StateError",
    "User",
    "merge_hostinfo",
]

log = logging.getLogger("meshlet_control.state")

_USER_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

DEFAULT_BASE_DOMAIN = "meshlet.internal"
DEFAULT_USER = "default"
"""Owner of nodes admitted interactively, and of keys created without --user."""
MAX_PENDING = 1000
"""Unapproved registrations kept at most; each is a row an unauthenticated client can create."""


def _wall_ms() -> int:
    return int(time.time() * 1000)


class State(Presence, PreAuthKeys):
    """Users, keys, nodes and the policy of one tailnet.

    Args:
        db_path: the SQLite file (":memory:" in tests).
        base_domain: MagicDNS suffix; node names are `<hostname>.<base_domain>.`. None: the one `serve`
            last recorded in the database (meta "base_domain"), else meshlet.internal; admin commands use this.
        now_ms: the clock, Unix milliseconds.
        ephemeral_timeout_ms: how long an ephemeral node may stay offline before it is deleted.
        default_key_expiry_ms: key lifetime for untagged nodes that request none (0: never; Tailscale
            SaaS uses 180 days, headscale 0).
        server_url: base of the `auth_url` handed to interactive registrations.
        pending_timeout_ms: unapproved new registrations are dropped after this long.
    """

    def __init__(
        self,
        db_path: str,
        base_domain: str | None = "meshlet.internal",
        now_ms: Callable[[], int] | None = None,
        *,
        ephemeral_timeout_ms: int = 30 * 60_000,
        default_key_expiry_ms: int = 0,
        server_url: str = "",
        pending_timeout_ms: int = 30 * 60_000,
    ) -> None:
        self.db = Database(db_path)
        if base_domain is None:
            base_domain = self.db.meta("base_domain") or DEFAULT_BASE_DOMAIN
        try:
            self.base_domain = names.check_base_domain(base_domain)
        except ValueError as e:
            self.db.close()
            raise StateError(str(e)) from None
        self._now = now_ms or _wall_ms
        self.ephemeral_timeout_ms = ephemeral_timeout_ms
        self.default_key_expiry_ms = default_key_expiry_ms
        self.server_url = server_url.rstrip("/")
        self.pending_timeout_ms = pending_timeout_ms
        self._subscribers: list[Callable[[Change], None]] = []
        self._offline_since: dict[int, int] = {}
        self._expired_notified: set[int] = set()
        self._compiled: policy_mod.Compiled | None = None
        self._ips = IPAllocator()
        self._hostnames: set[str] = set()
        self._foreign_names: set[str] = set()  # taken by another process's insert, seen on a collision
        self._load()
        for n in self._nodes.values():
            if n.is_expired(self._now()):
                self._expired_notified.add(n.id)
        self._data_version = self.db.data_version()

    def close(self) -> None:
        self.db.close()

    # -- loading ---------------------------------------------------------------------

    def _load(self) -> None:
        self._users = {int(r["id"]): user_from_row(r) for r in self.db.users()}
        self._nodes: dict[int, Node] = {}
        for r in self.db.nodes():
            n = node_from_row(r, self.base_domain)
            self._nodes[n.id] = n
        self._by_machine = {n.machine_key: n.id for n in self._nodes.values()}
        self._by_node_key = {n.node_key: n.id for n in self._nodes.values()}
        self._hostnames = {n.hostname for n in self._nodes.values()}
        self._foreign_names = set()
        cursors = (self._ips.v4.cursor, self._ips.v6.cursor)
        self._ips = IPAllocator(ip for n in self._nodes.values() for ip in (n.ipv4, n.ipv6))
        self._ips.v4.cursor, self._ips.v6.cursor = cursors
        self._policy_text = self.db.policy()
        self._policy = self._parse_stored_policy(self._policy_text)
        self._compiled = None
        for n in self._nodes.values():
            if n.ephemeral and not n.online and n.id not in self._offline_since:
                self._offline_since[n.id] = n.last_seen_ms or n.created_ms

    def _parse_stored_policy(self, text: str | None) -> policy_mod.Policy | None:
        if text is None:
            return None
        try:
            return policy_mod.parse_policy(text)
        except policy_mod.PolicyError as e:
            log.error(
                "state: the stored policy does not parse (%s); denying all traffic until it is replaced", e
            )
            return policy_mod.Policy(text, acls=[])

    def refresh(self) -> list[Change]:
        """Picks up commits made by other processes (admin commands) and announces what they changed."""
        version = self.db.data_version()
        if version == self._data_version:
            return []
        self._data_version = version
        old_nodes, old_policy = self._nodes, self._policy_text
        self._load()
        changes = diff(old_nodes, self._nodes)
        if self._policy_text != old_policy:
            changes.append(Change("policy_changed", None))
        for c in changes:
            if c.kind == "node_removed" and c.node_id is not None and c.node_id not in self._nodes:
                self._offline_since.pop(c.node_id, None)
            if c.fields.get("expiry") and c.node_id is not None:
                self._expired_notified.discard(c.node_id)
            self._emit(c)
        return changes

    # -- users -----------------------------------------------------------------------

    def create_user(self, name: str) -> User:
        if not _USER_RE.match(name):
            raise StateError(
                "user name %r is not allowed; use 1-63 lowercase letters, digits, '.', '_' or '-', "
                "e.g. alice" % name
            )
        if self.user_by_name(name) is not None:
            raise StateError("user %r already exists; see `meshlet-control users list`" % name)
        now = self._now()
        with self.db.transaction():
            uid = self.db.insert_user(name, name, now)
        user = User(uid, name, name, now)
        self._users[uid] = user
        self._compiled = None
        return user

    def list_users(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: u.id)

    def get_user(self, user_id: int) -> User | None:
        return self._users.get(user_id)

    def user_by_name(self, name: str) -> User | None:
        for u in self._users.values():
            if u.name == name:
                return u
        return None

    def default_user(self) -> User:
        """The user "default", created on first use."""
        return self.user_by_name(DEFAULT_USER) or self.create_user(DEFAULT_USER)

    def owner(self, node: Node) -> User:
        """Who the node belongs to for the netmap: its user, or "tagged-devices" for tagged nodes."""
        if node.tags:
            return TAGGED_DEVICES
        return self._users.get(node.user_id) or User(node.user_id, "user%d" % node.user_id, "", 0)

    # -- registration ----------------------------------------------------------------

    def register(
        self,
        machine_key: MachinePublic,
        node_key: NodePublic,
        old_node_key: NodePublic | None,
        auth_key: str | None,
        hostinfo: dict[str, Any] | None,
        requested_expiry_ms: int = 0,
        followup: str = "",
        *,
        ephemeral: bool = False,
        capver: int = 0,
    ) -> RegisterResult:
        """Handles one /machine/register (the decisions, after headscale, are in auth.py).

        Args:
            machine_key: from the Noise handshake.
            node_key, old_node_key: RegisterRequest.NodeKey / OldNodeKey (None or zero: none).
            auth_key: Auth.AuthKey, or None/"" for interactive registration.
            hostinfo: RegisterRequest.Hostinfo.
            requested_expiry_ms: RegisterRequest.Expiry (0 for the zero time; in the past means logout).
            followup: RegisterRequest.Followup (the auth_url of an earlier answer).
            ephemeral: RegisterRequest.Ephemeral (tsnet's Ephemeral option).
            capver: RegisterRequest.Version.
        """
        from . import auth  # it builds on this module

        req = auth.Request(
            machine_key,
            node_key,
            old_node_key,
            auth_key or "",
            dict(hostinfo or {}),
            requested_expiry_ms,
            followup,
            ephemeral,
            capver,
            self._now(),
        )
        return auth.register(self, req)

    # -- admin -----------------------------------------------------------------------

    def _node_or_error(self, node_id: int) -> Node:
        node = self._nodes.get(node_id)
        if node is None:
            raise StateError("no node with id %d; see `meshlet-control nodes list`" % node_id)
        return node

    def rename_node(self, node_id: int, new_name: str) -> Node:
        node = self._node_or_error(node_id)
        label = new_name.strip().lower()
        if not names.valid_label(label):
            raise StateError(
                "%r is not a valid node name; use 1-63 of a-z, 0-9 and '-', starting and ending with "
                "a letter or digit" % new_name
            )
        other = next((n for n in self._nodes.values() if n.hostname == label and n.id != node_id), None)
        if other is not None:
            raise StateError(
                "the name %r is taken by node %d; rename or delete that one first" % (label, other.id)
            )
        return self._update(node, {"hostname": label})

    def expire_node(self, node_id: int) -> Node:
        """Expires the node's key now: it must log in again (with a valid key, or by approval)."""
        return self._expire_now(self._node_or_error(node_id), self._now())

    def delete_node(self, node_id: int) -> Node:
        node = self._node_or_error(node_id)
        self._delete(node, {})
        return node

    def approve_node(self, node_id: int, user: User | None = None) -> Node:
        """Admits a node waiting after an interactive registration (and renews its key expiry)."""
        node = self._node_or_error(node_id)
        if node.authorized:
            raise StateError("node %d (%s) is already approved" % (node_id, node.hostname))
        cols: dict[str, Any] = {"authorized": True, "expiry_ms": self._expiry_for(node.tags, 0, self._now())}
        if user is not None:
            cols["user_id"] = user.id
        if not node.ipv4:
            cols["ipv4"], cols["ipv6"] = self._allocate()
        updated = self._update(node, cols, announce=False)
        self._emit(Change("node_added", node_id))
        return updated

    # -- policy ----------------------------------------------------------------------

    def set_policy(self, text: str) -> policy_mod.Policy:
        """Checks and stores a policy file. Raises policy.PolicyError (with line and column)."""
        parsed = policy_mod.parse_policy(text)
        with self.db.transaction():
            self.db.set_policy(text, self._now())
        self._policy_text, self._policy, self._compiled = text, parsed, None
        self._emit(Change("policy_changed", None))
        return parsed

    def clear_policy(self) -> None:
        """Back to no policy: everything allowed."""
        with self.db.transaction():
            self.db.set_policy(None, self._now())
        self._policy_text, self._policy, self._compiled = None, None, None
        self._emit(Change("policy_changed", None))

    def get_policy(self) -> str | None:
        return self._policy_text

    def compiled_policy(self) -> policy_mod.Compiled:
        """The policy resolved against the current authorised nodes (cached until something relevant changes)."""
        if self._compiled is None:
            members = [n for n in self._nodes.values() if n.authorized and n.ipv4]
            self._compiled = policy_mod.compile_policy(self._policy, members, self._users.values())
        return self._compiled

    def packet_filter(self, node_id: int) -> list[dict[str, Any]]:
        """tailcfg PacketFilter rules for the node (allow-all without a policy)."""
        node = self._nodes.get(node_id)
        if node is None:
            return []
        return self.compiled_policy().filter_for(node)

    def may_see(self, viewer_id: int, peer_id: int) -> bool:
        """Whether `peer_id` belongs in `viewer_id`'s netmap (both authorised; either may reach the other)."""
        v, p = self._nodes.get(viewer_id), self._nodes.get(peer_id)
        if v is None or p is None or not p.authorized or not v.authorized or viewer_id == peer_id:
            return False
        return self.compiled_policy().may_see(viewer_id, peer_id)

    def visible_peers(self, node_id: int) -> list[Node]:
        """The node's peers for its netmap, by id."""
        if node_id not in self._nodes:
            return []
        ids = self.compiled_policy().peers_for(node_id)
        return [self._nodes[i] for i in sorted(ids) if i in self._nodes]

    # -- meta ------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        return self.db.meta(key)

    def set_meta(self, key: str, value: str) -> None:
        with self.db.transaction():
            self.db.set_meta(key, value)
