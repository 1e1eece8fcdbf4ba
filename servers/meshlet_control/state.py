"""The control server's state: users, pre-auth keys, nodes and the policy, in SQLite with a cache in memory.

Theory of operation. `State` owns one database connection (db.py) and keeps
every user and node in memory, so the map side reads without SQL; every
change is written through to the database in a transaction, then announced
to subscribers as a `Change`. The clock is injected (`now_ms`), times are
Unix milliseconds, and nothing here is async: the asyncio shell calls in from
the event loop (State is not thread-safe) and turns callbacks into queue puts.

Change kinds, and `fields` (name -> new value):

* `node_added`: a node entered the tailnet (registered with a key, or
  approved); `node_removed`: it left (deleted, ephemeral clean-up, logout of
  an ephemeral node, or it lost its authorisation: then fields has
  `{"authorized": False}`). Unauthorised (pending) nodes are never peers.
* `node_changed`: one or more of `endpoints`, `home_derp`, `disco_key`,
  `node_key`, `online` (with `last_seen`), `hostinfo`, `name` (the new FQDN),
  `expiry` (ms, 0 never), `expired` (True once the key expiry passes),
  `tags`, `user`, `capver`.
* `policy_changed`: a new policy (fields empty).

Peer visibility and packet filters change with node_added/node_removed,
policy_changed and node_changed carrying tags or user: the map side should
then recompute `packet_filter()` per stream and send it when it differs.

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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from meshlet.key import DiscoPublic, MachinePublic, NodePublic

from . import names
from . import policy as policy_mod
from .db import Database, Row
from .ipalloc import AddressesExhausted, IPAllocator

log = logging.getLogger("meshlet_control.state")

KEY_PREFIX = "mlt-auth-"
_KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_KEY_ID_LEN = 12
_KEY_SECRET_LEN = 32  # 36^32: about 165 bits
_KEY_RE = re.compile(r"^mlt-auth-([a-z0-9]{12})(?:-([a-z0-9]{32}))?$")
_USER_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_TAG_RE = re.compile(r"^tag:[A-Za-z][A-Za-z0-9-]*$")

DEFAULT_BASE_DOMAIN = "meshlet.internal"
DEFAULT_USER = "default"
"""Owner of nodes admitted interactively, and of keys created without --user."""
TAGGED_DEVICES_ID = 2147455555  # headscale's id for its "tagged-devices" user
MAX_PENDING = 1000
"""Unapproved registrations kept at most; each is a row an unauthenticated client can create."""

_NOTIFIED = (
    "endpoints",
    "home_derp",
    "disco_key",
    "node_key",
    "online",
    "hostinfo",
    "hostname",
    "expiry_ms",
    "tags",
    "user_id",
    "capver",
)
_FIELD_NAMES = {"hostname": "name", "expiry_ms": "expiry", "user_id": "user"}
_TOPOLOGY = ("tags", "user_id", "ipv4", "ipv6", "authorized")


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


@dataclass(frozen=True)
class Change:
    kind: str
    node_id: int | None
    fields: dict[str, Any] = field(default_factory=dict)


def _wall_ms() -> int:
    return int(time.time() * 1000)


class State:
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

    # -- loading and notifying -------------------------------------------------------

    def _load(self) -> None:
        self._users = {int(r["id"]): _user(r) for r in self.db.users()}
        self._nodes: dict[int, Node] = {}
        for r in self.db.nodes():
            n = self._node_from_row(r)
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

    def _node_from_row(self, r: Row) -> Node:
        return Node(
            id=int(r["id"]),
            stable_id=r["stable_id"],
            user_id=int(r["user_id"]),
            hostname=r["hostname"],
            fqdn=names.fqdn(r["hostname"], self.base_domain),
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

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Calls `callback(change)` after every committed change; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, change: Change) -> Change:
        for cb in list(self._subscribers):
            try:
                cb(change)
            except Exception:  # noqa: BLE001 - one broken subscriber must not stop the others
                log.exception("state: a change subscriber failed on %s", change.kind)
        return change

    def refresh(self) -> list[Change]:
        """Picks up commits made by other processes (admin commands) and announces what they changed."""
        version = self.db.data_version()
        if version == self._data_version:
            return []
        self._data_version = version
        old_nodes, old_policy = self._nodes, self._policy_text
        self._load()
        changes = _diff(old_nodes, self._nodes)
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

    # -- pre-auth keys ---------------------------------------------------------------

    def create_preauth_key(
        self,
        user: User,
        reusable: bool = False,
        ephemeral: bool = False,
        tags: Iterable[str] = (),
        expiry_ms: int = 0,
    ) -> PreAuthKey:
        """A new key; the returned object is the only place the whole key ever appears."""
        tag_list = sorted(set(tags))
        for t in tag_list:
            if not _TAG_RE.match(t):
                raise StateError(
                    "tag %r is not valid; write tag: and a name starting with a letter, e.g. tag:server" % t
                )
            if self._policy is not None and t not in self._policy.tag_owners:
                raise StateError(
                    "tag %r is not in the policy's tagOwners; add it there (meshlet-control policy "
                    "set FILE) or drop it" % t
                )
        if self._users.get(user.id) is None:
            raise StateError(
                "user %r does not exist; create it with `meshlet-control users create NAME`" % user.name
            )
        now = self._now()
        key_id = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_ID_LEN))
        secret = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_SECRET_LEN))
        prefix = KEY_PREFIX + key_id
        key = prefix + "-" + secret
        with self.db.transaction():
            kid = self.db.insert_preauth_key(
                prefix, _hash(key), user.id, reusable, ephemeral, json.dumps(tag_list), expiry_ms, now
            )
        return PreAuthKey(kid, key, user.id, reusable, ephemeral, tag_list, expiry_ms, False, now, prefix)

    def list_preauth_keys(self, user: User | None = None) -> list[PreAuthKey]:
        return [_key(r) for r in self.db.preauth_keys(None if user is None else user.id)]

    def expire_preauth_key(self, key_or_id: str | int) -> PreAuthKey:
        """Makes a key unusable for new nodes (nodes it admitted stay). Accepts the id, the key or its prefix."""
        row = self._find_key_row(key_or_id)
        if row is None:
            raise StateError("no pre-auth key %r; see `meshlet-control keys list`" % (key_or_id,))
        now = self._now()
        if not (row["expiry_ms"] and row["expiry_ms"] <= now):
            with self.db.transaction():
                self.db.update_preauth_key(int(row["id"]), {"expiry_ms": now})
        again = self.db.preauth_key(int(row["id"]))
        assert again is not None
        return _key(again)

    def _find_key_row(self, key_or_id: str | int) -> Row | None:
        text = str(key_or_id).strip()
        if text.isdigit():
            return self.db.preauth_key(int(text))
        m = _KEY_RE.match(text.removesuffix("-***"))
        if m is None:
            return None
        row = self.db.preauth_key_by_prefix(KEY_PREFIX + m.group(1))
        if row is not None and m.group(2) and not hmac.compare_digest(_hash(text), row["key_hash"]):
            return None
        return row

    def _lookup_auth_key(self, text: str) -> PreAuthKey | None:
        m = _KEY_RE.match(text.strip())
        if m is None or m.group(2) is None:
            return None
        row = self.db.preauth_key_by_prefix(KEY_PREFIX + m.group(1))
        if row is None or not hmac.compare_digest(_hash(text.strip()), row["key_hash"]):
            return None
        return _key(row)

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

    def _use_key(self, pak: PreAuthKey) -> None:
        if not pak.reusable and not pak.used:
            self.db.update_preauth_key(pak.id, {"used": 1})

    def _expiry_for(self, tags: list[str], requested_ms: int, now: int) -> int:
        if tags:
            return 0
        if requested_ms > now:
            return requested_ms
        return now + self.default_key_expiry_ms if self.default_key_expiry_ms else 0

    # -- node records ----------------------------------------------------------------

    def _create(
        self,
        machine_key: MachinePublic,
        node_key: NodePublic,
        info: dict[str, Any],
        user_id: int,
        tags: list[str],
        ephemeral: bool,
        expiry_ms: int,
        pak: PreAuthKey | None,
        capver: int,
        authorized: bool,
    ) -> Node:
        now = self._now()
        base = names.sanitize_hostname(str(info.get("Hostname") or ""), machine_key.raw.hex())
        for attempt in range(3):
            hostname = names.unique_label(base, self._hostname_taken)
            v4, v6 = self._allocate() if authorized else ("", "")
            cols = _columns(
                {
                    "stable_id": "",
                    "user_id": user_id,
                    "hostname": hostname,
                    "machine_key": machine_key,
                    "node_key": node_key,
                    "disco_key": None,
                    "ipv4": v4,
                    "ipv6": v6,
                    "endpoints": [],
                    "home_derp": 0,
                    "hostinfo": info,
                    "tags": list(tags),
                    "ephemeral": ephemeral,
                    "created_ms": now,
                    "last_seen_ms": now,
                    "online": False,
                    "expiry_ms": expiry_ms,
                    "authorized": authorized,
                    "auth_key_id": pak.id if pak else None,
                    "capver": capver,
                }
            )
            try:
                with self.db.transaction():
                    node_id = self.db.insert_node(cols)
                    self.db.update_node(node_id, {"stable_id": str(node_id)})
                    if pak is not None:
                        self._use_key(pak)
                break
            except sqlite3.IntegrityError as e:
                # another process took the name or an address meanwhile: reload and pick again
                log.warning("state: node insert collided (%s); retrying", e)
                self._ips.release(v4)
                self._ips.release(v6)
                for ip in self.db.used_addresses():
                    self._ips.mark_used(ip)
                self._foreign_names = self.db.hostnames()
                if attempt == 2:
                    raise StateError("cannot store the node: %s" % e) from None
        row = self.db.node(node_id)
        assert row is not None
        node = self._node_from_row(row)
        self._put(node)
        if ephemeral:
            self._offline_since[node.id] = now
        if authorized:
            self._emit(Change("node_added", node.id))
        return node

    def _hostname_taken(self, label: str) -> bool:
        return label in self._hostnames or label in self._foreign_names

    def _allocate(self) -> tuple[str, str]:
        try:
            return self._ips.allocate()
        except AddressesExhausted as e:
            raise StateError(str(e)) from None

    def _put(self, node: Node) -> None:
        old = self._nodes.get(node.id)
        if old is not None:
            self._by_node_key.pop(old.node_key, None)
            self._hostnames.discard(old.hostname)
        self._nodes[node.id] = node
        self._by_machine[node.machine_key] = node.id
        self._by_node_key[node.node_key] = node.id
        self._hostnames.add(node.hostname)

    def _update(self, node: Node, changes: dict[str, Any], announce: bool = True) -> Node:
        """Writes the changed fields and announces node_changed (if `announce` and any notified field moved)."""
        updated, change = self._apply(node, changes)
        if announce and change is not None:
            self._emit(change)
        return updated

    def _apply(self, node: Node, changes: dict[str, Any]) -> tuple[Node, Change | None]:
        """Writes the fields that differ and updates the cache; returns the node_changed to announce, if any."""
        diff = {k: v for k, v in changes.items() if getattr(node, k) != v}
        if not diff:
            return node, None
        with self.db.transaction():
            self.db.update_node(node.id, _columns(diff))
        extra: dict[str, Any] = (
            {"fqdn": names.fqdn(diff["hostname"], self.base_domain)} if "hostname" in diff else {}
        )
        updated = replace(node, **diff, **extra)
        self._put(updated)
        if any(k in diff for k in _TOPOLOGY):
            self._compiled = None
        if "expiry_ms" in diff:
            self._expired_notified.discard(node.id)
        fields = {
            _FIELD_NAMES.get(k, k): (extra["fqdn"] if k == "hostname" else v)
            for k, v in diff.items()
            if k in _NOTIFIED
        }
        if not updated.authorized or not fields:
            return updated, None
        return updated, Change("node_changed", node.id, fields)

    def _expire_now(self, node: Node, now: int) -> Node:
        updated = self._update(node, {"expiry_ms": now}, announce=False)
        self._expired_notified.add(node.id)
        if updated.authorized:
            self._emit(Change("node_changed", node.id, {"expiry": now, "expired": True}))
        return updated

    def _delete(self, node: Node, fields: dict[str, Any]) -> None:
        with self.db.transaction():
            self.db.delete_node(node.id)
        self._nodes.pop(node.id, None)
        self._hostnames.discard(node.hostname)
        self._by_machine.pop(node.machine_key, None)
        self._by_node_key.pop(node.node_key, None)
        self._ips.release(node.ipv4)
        self._ips.release(node.ipv6)
        self._offline_since.pop(node.id, None)
        self._compiled = None
        if node.authorized:
            self._emit(Change("node_removed", node.id, fields))

    # -- node queries ----------------------------------------------------------------

    def node_by_machine(self, machine_key: MachinePublic) -> Node | None:
        i = self._by_machine.get(machine_key)
        return None if i is None else self._nodes.get(i)

    def node_by_node_key(self, node_key: NodePublic) -> Node | None:
        i = self._by_node_key.get(node_key)
        return None if i is None else self._nodes.get(i)

    def get_node(self, node_id: int) -> Node | None:
        return self._nodes.get(node_id)

    def list_nodes(self) -> list[Node]:
        """Every node, pending ones included, by id."""
        return [self._nodes[i] for i in sorted(self._nodes)]

    # -- updates from the map long-poll ----------------------------------------------

    def update_from_map_request(
        self,
        node_id: int,
        disco_key: DiscoPublic | None,
        endpoints: list[str] | None,
        hostinfo: dict[str, Any] | None,
        home_derp: int | None,
        *,
        capver: int | None = None,
    ) -> Change | None:
        """Applies a MapRequest's DiscoKey, Endpoints, Hostinfo (NetInfo kept when absent) and home DERP.

        None for any argument means "not sent, keep". `home_derp` None also takes
        Hostinfo.NetInfo.PreferredDERP when present. Returns the node_changed announced, if any.
        """
        node = self._nodes.get(node_id)
        if node is None:
            return None
        changes: dict[str, Any] = {"last_seen_ms": self._now()}
        if disco_key is not None:
            changes["disco_key"] = disco_key
        if endpoints is not None:
            changes["endpoints"] = list(endpoints)
        if hostinfo is not None:
            merged = merge_hostinfo(node.hostinfo, hostinfo)
            changes["hostinfo"] = merged
            preferred = (merged.get("NetInfo") or {}).get("PreferredDERP")
            if home_derp is None and isinstance(preferred, int) and preferred > 0:
                home_derp = preferred
        if home_derp is not None:
            changes["home_derp"] = home_derp
        if capver:
            changes["capver"] = capver
        _, change = self._apply(node, changes)
        return None if change is None else self._emit(change)

    def set_online(self, node_id: int, online: bool) -> Change | None:
        """Marks a node connected or not (the map stream opened or closed for good)."""
        node = self._nodes.get(node_id)
        if node is None or node.online == online:
            return None
        now = self._now()
        if node.ephemeral:
            if online:
                self._offline_since.pop(node_id, None)
            else:
                self._offline_since[node_id] = now
        with self.db.transaction():
            self.db.update_node(node_id, {"online": int(online), "last_seen_ms": now})
        self._put(replace(node, online=online, last_seen_ms=now))
        if not node.authorized:
            return None
        return self._emit(Change("node_changed", node_id, {"online": online, "last_seen": now}))

    def mark_all_offline(self) -> None:
        """At server start: nobody is connected yet (no announcements: nobody listens yet)."""
        now = self._now()
        for node in list(self._nodes.values()):
            if node.online:
                with self.db.transaction():
                    self.db.update_node(node.id, {"online": 0, "last_seen_ms": now})
                self._put(replace(node, online=False, last_seen_ms=now))
                if node.ephemeral:
                    self._offline_since[node.id] = now

    def tick(self) -> list[Change]:
        """Time-driven work, about once a second: ephemeral clean-up, key expiry, stale registrations."""
        now = self._now()
        out: list[Change] = []
        for node_id, since in list(self._offline_since.items()):
            node = self._nodes.get(node_id)
            if node is None or node.online:
                self._offline_since.pop(node_id, None)
            elif now - since >= self.ephemeral_timeout_ms:
                log.info(
                    "state: deleting ephemeral node %d (%s), offline since %d ms",
                    node.id,
                    node.hostname,
                    now - since,
                )
                self._delete(node, {"reason": "ephemeral"})
                if node.authorized:
                    out.append(Change("node_removed", node.id, {"reason": "ephemeral"}))
        for node in list(self._nodes.values()):
            if not node.authorized and not node.ipv4 and now - node.created_ms >= self.pending_timeout_ms:
                self._delete(node, {})
            elif node.authorized and node.is_expired(now) and node.id not in self._expired_notified:
                self._expired_notified.add(node.id)
                out.append(self._emit(Change("node_changed", node.id, {"expired": True})))
        return out

    def next_deadline_ms(self) -> int | None:
        """When tick() next has something to do (None: nothing scheduled)."""
        times = [since + self.ephemeral_timeout_ms for since in self._offline_since.values()]
        times += [
            n.expiry_ms for n in self._nodes.values() if n.expiry_ms and n.id not in self._expired_notified
        ]
        times += [n.created_ms + self.pending_timeout_ms for n in self._nodes.values() if not n.authorized]
        return min(times) if times else None

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


# -- helpers ---------------------------------------------------------------------------


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _user(r: Row) -> User:
    return User(int(r["id"]), r["name"], r["display_name"], int(r["created_ms"]))


def _key(r: Row) -> PreAuthKey:
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


def merge_hostinfo(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The new Hostinfo, keeping the old NetInfo when the client left it out (it sends it only on change)."""
    merged = dict(new)
    if "NetInfo" not in merged and "NetInfo" in old:
        merged["NetInfo"] = old["NetInfo"]
    return merged


def _columns(values: dict[str, Any]) -> dict[str, Any]:
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


def _diff(old: dict[int, Node], new: dict[int, Node]) -> list[Change]:
    """What another process changed, as the announcements the server would have made itself."""
    out: list[Change] = []
    for i in sorted(set(old) | set(new)):
        a, b = old.get(i), new.get(i)
        was, now = a is not None and a.authorized, b is not None and b.authorized
        if was and not now:
            out.append(Change("node_removed", i, {} if b is None else {"authorized": False}))
        elif now and not was:
            out.append(Change("node_added", i))
        elif a is not None and b is not None and now:
            fields = {
                _FIELD_NAMES.get(k, k): (b.fqdn if k == "hostname" else getattr(b, k))
                for k in _NOTIFIED
                if getattr(a, k) != getattr(b, k)
            }
            if "online" in fields:
                fields["last_seen"] = b.last_seen_ms
            if fields:
                out.append(Change("node_changed", i, fields))
    return out
