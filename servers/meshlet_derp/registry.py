"""Who is connected, and where a packet goes: the relay's routing table, without I/O.

The asyncio shell (server.py) owns sockets and queues; this module owns the
decisions, so they can be tested with plain objects standing in for
connections. shared/protocol/derp.md §6 and §7 are the reference; the
behaviour follows Tailscale's derpserver.go:

* **Routing.** SendPacket to key K goes to K's active local connection; if
  K has no local connection but a mesh peer announced it (PeerPresent), it
  is forwarded there as ForwardPacket; otherwise it is dropped, and if it
  looks like disco the sender is told PeerGone(K, NotHere), at most once a
  second per sender with a burst of 3.
* **PeerGone(Disconnected).** Every connection that was *sent* packets from
  K is told when K leaves the region (its last local connection closes and
  no mesh peer still has it), so it drops its reverse route.
* **Duplicate keys.** A key may be connected more than once. The newest
  connection is active; the others stay open but receive nothing, and are
  told so with a Health frame. "Last writer is active": a connection of the
  set that sends something becomes active again (and the one it displaced
  gets the Health frame). Tailscale's server does not send Health here;
  meshlet does so that a cloned node key shows up as a health warning.
* **Watchers.** Mesh peers that sent WatchConns get PeerPresent for every
  connected key, then PeerPresent/PeerGone as keys come and go.
"""

from __future__ import annotations

from typing import Callable, Protocol

from meshlet.derp import frames
from meshlet.disco import looks_like_disco
from meshlet.key import NodePublic

from .metrics import Metrics

# Tailscale's rate for PeerGone(NotHere): rate.NewLimiter(rate.Every(time.Second), 3).
NOT_HERE_INTERVAL_MS = 1000
NOT_HERE_BURST = 3

DUPLICATE_HEALTH = (
    "another connection with this node key is active on this DERP server; this one receives no packets "
    "(is the node key copied to a second machine?)"
)


class Client(Protocol):
    """What the registry needs from a connection (server.Connection implements it)."""

    key: NodePublic
    is_mesh_peer: bool
    is_dup: bool  # maintained by the registry: the key has more than one connection

    def present_info(self) -> tuple[bytes, int, int]:
        """(16-byte IP or 4-byte IPv4, port, PEER_PRESENT_* flags) for PeerPresent."""
        ...

    def send_packet(self, src: NodePublic, data: bytes, disco: bool) -> None: ...

    def send_control(self, frame: bytes) -> None: ...

    def close(self, reason: str) -> None: ...


class Forwarder(Protocol):
    """A mesh connection to another relay of the region (mesh.MeshClient implements it)."""

    def forward_packet(self, src: NodePublic, dst: NodePublic, data: bytes) -> None: ...


class TokenBucket:
    """A token bucket in whole events: `allow(now_ms)` spends one token if there is one."""

    __slots__ = ("interval_ms", "burst", "_tokens", "_last_ms")

    def __init__(self, interval_ms: int, burst: int, now_ms: int) -> None:
        self.interval_ms = interval_ms
        self.burst = burst
        self._tokens = float(burst)
        self._last_ms = now_ms

    def allow(self, now_ms: int) -> bool:
        elapsed = max(0, now_ms - self._last_ms)
        self._last_ms = now_ms
        self._tokens = min(float(self.burst), self._tokens + elapsed / self.interval_ms)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ClientSet:
    """The connections of one key, oldest first; `active` gets the packets (or None)."""

    __slots__ = ("conns", "active", "told")

    def __init__(self, first: Client) -> None:
        self.conns: list[Client] = [first]
        self.active: Client | None = first
        self.told: set[int] = set()  # id()s of connections sent the duplicate Health frame


class Registry:
    """The relay's routing state.

    Args:
        server_key: this relay's own public key (a mesh peer dialling
            itself is ignored, as Tailscale does).
        metrics: the counters to bump.
        clock_ms: monotonic milliseconds, for the NotHere rate limit.
    """

    def __init__(self, server_key: NodePublic, metrics: Metrics, clock_ms: Callable[[], int]) -> None:
        self.server_key = server_key
        self.metrics = metrics
        self.clock_ms = clock_ms
        self._sets: dict[NodePublic, ClientSet] = {}
        self._forwarders: dict[NodePublic, list[Forwarder]] = {}
        self._watchers: list[Client] = []
        # src key -> connections that were sent packets from src (for PeerGone(Disconnected)).
        self._gone_watchers: dict[NodePublic, set[Client]] = {}
        self._saw: dict[Client, set[NodePublic]] = {}
        self._not_here: dict[Client, TokenBucket] = {}

    # -- membership ------------------------------------------------------------------

    def register(self, c: Client) -> None:
        """Adds a logged-in connection; the newest connection of a key becomes active."""
        s = self._sets.get(c.key)
        if s is None:
            self._sets[c.key] = ClientSet(c)
            c.is_dup = False
            self.metrics.clients_local = len(self._sets)
        else:
            old = s.active
            s.conns.append(c)
            for other in s.conns:
                other.is_dup = True
            self.metrics.dup_connections_total += 1
            self._activate(s, c, old)
        self._broadcast_present(c)

    def unregister(self, c: Client) -> None:
        """Removes a connection; tells watchers and PeerGone-watchers if its key left."""
        s = self._sets.get(c.key)
        if s is not None and c in s.conns:
            s.conns.remove(c)
            s.told.discard(id(c))
            if not s.conns:
                del self._sets[c.key]
                self.metrics.clients_local = len(self._sets)
                if c.key not in self._forwarders:
                    self._peer_gone_from_region(c.key)
                self._broadcast_gone(c.key)
            else:
                if len(s.conns) == 1:
                    s.conns[0].is_dup = False
                if s.active is c or s.active is None:
                    self._activate(s, s.conns[-1], None)
        if c in self._watchers:
            self._watchers.remove(c)
        for src in self._saw.pop(c, ()):
            watchers = self._gone_watchers.get(src)
            if watchers is not None:
                watchers.discard(c)
                if not watchers:
                    del self._gone_watchers[src]
        self._not_here.pop(c, None)

    def note_activity(self, c: Client) -> None:
        """A duplicate connection sent a frame: "last writer is active" (call only when c.is_dup)."""
        s = self._sets.get(c.key)
        if s is not None and s.active is not c and c in s.conns:
            s.conns.remove(c)
            s.conns.append(c)
            self._activate(s, c, s.active)

    def _activate(self, s: ClientSet, new: Client, old: Client | None) -> None:
        s.active = new
        if old is not None and old is not new:
            s.told.add(id(old))
            old.send_control(frames.build_health(DUPLICATE_HEALTH))
        if id(new) in s.told:
            s.told.discard(id(new))
            new.send_control(frames.build_health(""))

    def lookup(self, key: NodePublic) -> Client | None:
        """The active local connection of `key`, if any."""
        s = self._sets.get(key)
        return None if s is None else s.active

    def connections_of(self, key: NodePublic) -> int:
        s = self._sets.get(key)
        return 0 if s is None else len(s.conns)

    def keys(self) -> int:
        return len(self._sets)

    def dup_keys(self) -> int:
        return sum(1 for s in self._sets.values() if len(s.conns) > 1)

    def close_peer(self, key: NodePublic) -> int:
        """ClosePeer from a mesh peer: closes every connection of `key`; returns how many."""
        s = self._sets.get(key)
        if s is None:
            return 0
        conns = list(s.conns)
        for c in conns:
            c.close("close_peer")
        return len(conns)

    # -- routing ---------------------------------------------------------------------

    def route(self, sender: Client, dst: NodePublic, data: bytes, disco: bool | None = None) -> None:
        """SendPacket from `sender` to `dst`; `disco` is looks_like_disco(data) if the caller knows it."""
        s = self._sets.get(dst)
        if s is not None and s.active is not None:
            self._deliver(s.active, sender.key, data, disco)
            return
        if s is None:
            fwds = self._forwarders.get(dst)
            if fwds:
                self.metrics.packets_forwarded_out_total += 1
                fwds[0].forward_packet(sender.key, dst, data)
                return
            self._not_here_maybe(sender, dst, data)
            self.metrics.drop("unknown_dest", data)
        else:
            self.metrics.drop("dup_client", data)

    def forward_in(self, mesh_peer: Client, src: NodePublic, dst: NodePublic, data: bytes) -> None:
        """ForwardPacket from a mesh peer: deliver locally as from `src`; never re-forwarded."""
        self.metrics.packets_forwarded_in_total += 1
        s = self._sets.get(dst)
        if s is not None and s.active is not None:
            self._deliver(s.active, src, data)
            return
        if s is None:
            self._not_here_maybe(mesh_peer, dst, data)
            self.metrics.drop("unknown_dest_on_fwd", data)
        else:
            self.metrics.drop("dup_client", data)

    def _deliver(self, dst: Client, src: NodePublic, data: bytes, disco: bool | None = None) -> None:
        saw = self._saw.get(dst)
        if saw is None:
            saw = self._saw[dst] = set()
        if src not in saw:
            saw.add(src)
            self._gone_watchers.setdefault(src, set()).add(dst)
        dst.send_packet(src, data, looks_like_disco(data) if disco is None else disco)

    def _not_here_maybe(self, sender: Client, dst: NodePublic, data: bytes) -> None:
        if not looks_like_disco(data):
            return
        bucket = self._not_here.get(sender)
        now = self.clock_ms()
        if bucket is None:
            bucket = self._not_here[sender] = TokenBucket(NOT_HERE_INTERVAL_MS, NOT_HERE_BURST, now)
        if bucket.allow(now):
            self.metrics.peer_gone_not_here_total += 1
            sender.send_control(frames.build_peer_gone(dst, frames.PEER_GONE_NOT_HERE))

    def _peer_gone_from_region(self, key: NodePublic) -> None:
        for c in self._gone_watchers.pop(key, ()):
            saw = self._saw.get(c)
            if saw is not None:
                saw.discard(key)
            self.metrics.peer_gone_disconnected_total += 1
            c.send_control(frames.build_peer_gone(key, frames.PEER_GONE_DISCONNECTED))

    # -- mesh ------------------------------------------------------------------------

    def add_watcher(self, c: Client) -> None:
        """WatchConns: PeerPresent for every connected key now, then every change."""
        if c.key == self.server_key or c in self._watchers:
            return
        for s in self._sets.values():
            if s.active is not None:
                c.send_control(_peer_present(s.active))
        self._watchers.append(c)

    def _broadcast_present(self, c: Client) -> None:
        if self._watchers:
            frame = _peer_present(c)
            for w in self._watchers:
                w.send_control(frame)

    def _broadcast_gone(self, key: NodePublic) -> None:
        if self._watchers:
            frame = frames.build_peer_gone(key, frames.PEER_GONE_DISCONNECTED)
            for w in self._watchers:
                w.send_control(frame)

    def add_forwarder(self, key: NodePublic, fwd: Forwarder) -> None:
        """A mesh peer announced `key` (PeerPresent); the first forwarder stays preferred."""
        fwds = self._forwarders.setdefault(key, [])
        if fwd not in fwds:
            fwds.append(fwd)
            self.metrics.clients_remote = len(self._forwarders)

    def remove_forwarder(self, key: NodePublic, fwd: Forwarder) -> None:
        """A mesh peer said `key` left (PeerGone), or its connection broke."""
        fwds = self._forwarders.get(key)
        if fwds is None or fwd not in fwds:
            return
        fwds.remove(fwd)
        if fwds:
            return
        del self._forwarders[key]
        self.metrics.clients_remote = len(self._forwarders)
        if key not in self._sets:
            self._peer_gone_from_region(key)

    def forwarders(self) -> int:
        return len(self._forwarders)


def _peer_present(c: Client) -> bytes:
    ip, port, flags = c.present_info()
    return frames.build_peer_present(c.key, ip, port, flags)
