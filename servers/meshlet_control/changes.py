"""What State announces after each committed change, and to whom.

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .records import Node

log = logging.getLogger("meshlet_control.state")

# Node fields whose change is announced in node_changed (under FIELD_NAMES' name, if any).
NOTIFIED = (
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
FIELD_NAMES = {"hostname": "name", "expiry_ms": "expiry", "user_id": "user"}
TOPOLOGY = ("tags", "user_id", "ipv4", "ipv6", "authorized")  # changes that change who sees whom


@dataclass(frozen=True)
class Change:
    kind: str
    node_id: int | None
    fields: dict[str, Any] = field(default_factory=dict)


class ChangeFeed:
    """The subscribers of State and the one way to tell them: `_emit`."""

    _subscribers: list[Callable[[Change], None]]

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


def diff(old: dict[int, Node], new: dict[int, Node]) -> list[Change]:
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
                FIELD_NAMES.get(k, k): (b.fqdn if k == "hostname" else getattr(b, k))
                for k in NOTIFIED
                if getattr(a, k) != getattr(b, k)
            }
            if "online" in fields:
                fields["last_seen"] = b.last_seen_ms
            if fields:
                out.append(Change("node_changed", i, fields))
    return out
