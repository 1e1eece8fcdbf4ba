"""State's node cache: every node in memory, each change written through to the database first.

Nodes are read without SQL from dicts kept in step with the `nodes` table
(by id, machine key and node key, plus the taken host names and addresses).
Every write goes through here: `_create` inserts (retrying when another
process took the name or an address meanwhile), `_apply` writes the fields
that differ and returns the node_changed to announce, `_update` announces it,
`_expire_now` and `_delete` announce their own. Registration (auth.py),
the map side (presence.py) and the admin commands (state.py) build on these.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace
from typing import Any, Callable

from meshlet.key import MachinePublic, NodePublic

from . import names
from . import policy as policy_mod
from .changes import FIELD_NAMES, NOTIFIED, TOPOLOGY, Change, ChangeFeed
from .db import Database
from .ipalloc import AddressesExhausted, IPAllocator
from .preauthkeys import mark_used
from .records import Node, PreAuthKey, StateError, node_columns, node_from_row

log = logging.getLogger("meshlet_control.state")


class NodeStore(ChangeFeed):
    """The node cache and its writes (the attributes below are State's, set in State.__init__ and _load)."""

    db: Database
    base_domain: str
    default_key_expiry_ms: int
    _now: Callable[[], int]
    _nodes: dict[int, Node]
    _by_machine: dict[MachinePublic, int]
    _by_node_key: dict[NodePublic, int]
    _hostnames: set[str]
    _foreign_names: set[str]
    _ips: IPAllocator
    _offline_since: dict[int, int]  # ephemeral nodes: offline since (ms)
    _expired_notified: set[int]
    _compiled: policy_mod.Compiled | None

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

    def _expiry_for(self, tags: list[str], requested_ms: int, now: int) -> int:
        if tags:
            return 0
        if requested_ms > now:
            return requested_ms
        return now + self.default_key_expiry_ms if self.default_key_expiry_ms else 0

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
            cols = node_columns(
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
                        mark_used(self.db, pak)
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
        node = node_from_row(row, self.base_domain)
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
            self.db.update_node(node.id, node_columns(diff))
        extra: dict[str, Any] = (
            {"fqdn": names.fqdn(diff["hostname"], self.base_domain)} if "hostname" in diff else {}
        )
        updated = replace(node, **diff, **extra)
        self._put(updated)
        if any(k in diff for k in TOPOLOGY):
            self._compiled = None
        if "expiry_ms" in diff:
            self._expired_notified.discard(node.id)
        fields = {
            FIELD_NAMES.get(k, k): (extra["fqdn"] if k == "hostname" else v)
            for k, v in diff.items()
            if k in NOTIFIED
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
