"""What the map long-poll and the clock do to nodes: reported endpoints, online/offline, clean-ups.

The map side (poll.py) reports each MapRequest's DiscoKey, Endpoints,
Hostinfo and home DERP, and whether a node's stream is up. `tick()`, which
the shell calls about once a second (`next_deadline_ms()` says when it has
work), deletes ephemeral nodes `ephemeral_timeout_ms` after they went
offline, announces key expiry once per node, and drops registrations that
nobody approved within `pending_timeout_ms`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from meshlet.key import DiscoPublic

from .changes import Change
from .nodestore import NodeStore
from .records import merge_hostinfo

log = logging.getLogger("meshlet_control.state")


class Presence(NodeStore):
    """State's map-side and time-driven node updates."""

    ephemeral_timeout_ms: int
    pending_timeout_ms: int

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
