"""One peer's path state: direct UDP when a pong vouches for it, DERP otherwise (disco.md §6).

Tailscale's magicsock keeps an "endpoint" per peer; this is its sans-I/O
core. It is fed the time (ms) and events and answers with what to do; the
agent's MagicSock does the sending, owns the txids' randomness source, and
seals the disco messages.

    candidates    where the peer might be reached: the netmap's Endpoints,
                  the last CallMeMaybe's list, and addresses that pinged us
                  over UDP (kept 45 s after their last ping)
    best          the candidate whose pong won `better_addr`, with its latency
    trusted       until 6.5 s after best's last pong

Sending (`send`, §6.1): a trusted best gets the packet alone; otherwise it
goes over DERP, and also to a stale best (it may still work), and a
discovery round starts: every candidate not pinged in the last 5 s is pinged,
and if any ping went out a CallMeMaybe goes to the peer via DERP so it pings
us back (that opens our NAT for its packets and its NAT for ours).

Heartbeat (`tick`, §6.2): while user traffic was sent in the last 45 s,
every 3 s the best path is pinged (keeping it trusted), and a full discovery
round runs when there is no trusted best, or once a minute when the best is
slower than 5 ms (a better path may have appeared). After 45 s without
traffic the heartbeat stops: an idle peer costs no wake-ups.

Pongs (`pong`, §6.3) are matched by txid; a ping is forgotten 5 s after it
was sent. CallMeMaybe (`call_me_maybe`, §6.5) replaces the earlier
CallMeMaybe candidates and pings every candidate at once.

A UDP ping from the peer while no path is trusted gets a ping back (`ping_back`, not in
Tailscale): it proves the peer's NAT is open towards us right now.

Actions are `Action(ACTION_PING, addr, txid)` (a disco ping over UDP to
`addr`) and `Action(ACTION_CALL_ME_MAYBE)` (our endpoints to the peer over
DERP). Addresses are (4- or 16-byte ip, port) tuples.
"""

from .._compat import TYPE_CHECKING, const
from ..disco import TXID_LEN
from .betteraddr import better_addr, is_link_local_v6

if TYPE_CHECKING:
    from typing import Callable

    Addr = tuple[bytes, int]

# Tailscale wgengine/magicsock (v1.90), all in ms.
HEARTBEAT_INTERVAL_MS = 3_000  # heartbeatInterval
TRUST_UDP_ADDR_MS = 6_500  # trustUDPAddrDuration
SESSION_ACTIVE_TIMEOUT_MS = 45_000  # sessionActiveTimeout
DISCO_PING_INTERVAL_MS = 5_000  # discoPingInterval
PING_TIMEOUT_MS = 5_000  # pingTimeoutDuration
UPGRADE_INTERVAL_MS = 60_000  # upgradeUDPDirectInterval
GOOD_ENOUGH_LATENCY_MS = 5  # goodEnoughLatency
PING_BACK_INTERVAL_MS = 1_000
"""Not Tailscale's: at most one ping back per candidate this often (see `ping_back`)."""
MAX_PING_LEARNED = 16
"""Addresses learned from pings are capped (Tailscale prunes them too), so a flood of spoofed
source addresses cannot grow the state without bound."""
_PONG_HISTORY = const(8)

FROM_NETMAP = 1
FROM_CALL_ME_MAYBE = 2
FROM_PING = 4

ACTION_PING = 1
ACTION_CALL_ME_MAYBE = 2

_NO_ACTIONS: "list[Action]" = []  # shared, never appended to: the fast path allocates nothing


class Action:
    """Something MagicSock should do for this peer."""

    __slots__ = ("kind", "addr", "txid")

    def __init__(self, kind: int, addr: "Addr | None" = None, txid: bytes = b"") -> None:
        self.kind = kind
        self.addr = addr
        self.txid = txid

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Action)
            and (self.kind, self.addr, self.txid) == (other.kind, other.addr, other.txid)
        )

    def __repr__(self) -> str:
        return "Action(%d, %r, %r)" % (self.kind, self.addr, self.txid)


class Candidate:
    """One address the peer may be reached at.

    Attributes:
        sources: FROM_* bits (an address can come from several places).
        last_ping_ms: when we last sent it a discovery ping (None: never).
        last_got_ping_ms: when it last pinged us (ping-learned lifetime).
        last_got_ping_txid: that ping's txid (a repeat gets no second pong).
        latencies_ms: the latest pong round trips, newest last.
    """

    __slots__ = (
        "addr", "sources", "last_ping_ms", "last_got_ping_ms", "last_got_ping_txid", "latencies_ms",
        "last_ping_back_ms",
    )

    def __init__(self, addr: "Addr", sources: int) -> None:
        self.addr = addr
        self.sources = sources
        self.last_ping_ms: "int | None" = None
        self.last_got_ping_ms: "int | None" = None
        self.last_got_ping_txid = b""
        self.latencies_ms: "list[int]" = []
        self.last_ping_back_ms: "int | None" = None


class SendPlan:
    """Where one user packet goes: `udp` (an address or None) and/or DERP; `actions` to do as well."""

    __slots__ = ("udp", "derp", "actions")

    def __init__(self, udp: "Addr | None", derp: bool, actions: "list[Action]") -> None:
        self.udp = udp
        self.derp = derp
        self.actions = actions


class PongResult:
    """A matched pong: the address the ping went to, its round trip, and whether it is now the best."""

    __slots__ = ("addr", "latency_ms", "is_best")

    def __init__(self, addr: "Addr", latency_ms: int, is_best: bool) -> None:
        self.addr = addr
        self.latency_ms = latency_ms
        self.is_best = is_best


class Endpoint:
    """The path state machine of one peer.

    Args:
        random_bytes: where ping txids come from.
    """

    def __init__(self, random_bytes: "Callable[[int], bytes]") -> None:
        self._random_bytes = random_bytes
        self.candidates: "dict[Addr, Candidate]" = {}
        self.best: "Addr | None" = None
        self.best_latency_ms = 0
        self.trust_until_ms = 0
        self.last_full_ping_ms: "int | None" = None
        self.last_send_ms: "int | None" = None
        self.next_heartbeat_ms: "int | None" = None
        self.pings: "dict[bytes, tuple[Addr, int]]" = {}  # txid -> (address pinged, sent at)
        self._trusted_plan: "SendPlan | None" = None

    # --- configuration ------------------------------------------------------------

    def set_netmap_endpoints(self, addrs: "list[Addr]") -> None:
        """The peer's Endpoints from a (new) netmap: they replace the earlier netmap candidates."""
        want = set(addrs)
        for addr in want:
            c = self.candidates.get(addr)
            if c is None:
                self.candidates[addr] = Candidate(addr, FROM_NETMAP)
            else:
                c.sources |= FROM_NETMAP
        self._drop_source(FROM_NETMAP, want)

    def call_me_maybe(self, addrs: "list[Addr]", now_ms: int) -> "list[Action]":
        """A CallMeMaybe (via DERP) listed `addrs`: they replace the earlier CallMeMaybe candidates,
        and every candidate is pinged now (no CallMeMaybe goes back)."""
        want = set(a for a in addrs if not is_link_local_v6(a[0]))
        for addr in want:
            c = self.candidates.get(addr)
            if c is None:
                self.candidates[addr] = Candidate(addr, FROM_CALL_ME_MAYBE)
            else:
                c.sources |= FROM_CALL_ME_MAYBE
        self._drop_source(FROM_CALL_ME_MAYBE, want)
        for c in self.candidates.values():
            c.last_ping_ms = None
        return self._discovery(now_ms, False)

    def _drop_source(self, source: int, keep: "set[Addr]") -> None:
        for addr in [a for a, c in self.candidates.items() if c.sources & source and a not in keep]:
            c = self.candidates[addr]
            c.sources &= ~source
            if not c.sources:
                self._forget(addr)

    def _forget(self, addr: "Addr") -> None:
        del self.candidates[addr]
        if addr == self.best:
            self._clear_best()

    def _clear_best(self) -> None:
        self.best = None
        self.best_latency_ms = 0
        self.trust_until_ms = 0
        self._trusted_plan = None

    def reset(self) -> None:
        """The peer restarted (a new disco key) or everything is in doubt: forget all but the netmap's
        candidates, the best path, pending pings and the activity."""
        for addr in [a for a, c in self.candidates.items() if not c.sources & FROM_NETMAP]:
            del self.candidates[addr]
        for c in self.candidates.values():
            c.sources = FROM_NETMAP
            c.last_ping_ms = None
            c.last_got_ping_ms = None
            c.last_got_ping_txid = b""
            c.latencies_ms = []
            c.last_ping_back_ms = None
        self._clear_best()
        self.last_full_ping_ms = None
        self.last_send_ms = None
        self.next_heartbeat_ms = None
        self.pings = {}

    def network_changed(self) -> None:
        """Our own network changed (a new NAT mapping): no path is trusted, every candidate is pinged
        again at the next chance."""
        self._clear_best()
        self.last_full_ping_ms = None
        for c in self.candidates.values():
            c.last_ping_ms = None
            c.latencies_ms = []

    def send_error(self, addr: "Addr") -> None:
        """Sending to `addr` failed in a way that says it is unusable (no route, unreachable)."""
        c = self.candidates.get(addr)
        if c is not None:
            c.latencies_ms = []
        if addr == self.best:
            self._clear_best()

    # --- events -------------------------------------------------------------------

    def send(self, now_ms: int) -> SendPlan:
        """User traffic to the peer: where it goes, and the discovery to start (§6.1)."""
        self.last_send_ms = now_ms
        if self.next_heartbeat_ms is None:
            self.next_heartbeat_ms = now_ms + HEARTBEAT_INTERVAL_MS
        plan = self._trusted_plan
        if plan is not None and now_ms <= self.trust_until_ms:
            return plan
        self._trusted_plan = None
        actions = self._discovery(now_ms, True)  # first: it may expire a ping-learned best
        return SendPlan(self.best, True, actions)

    def path(self, now_ms: int) -> SendPlan:
        """Where a packet would go now, without counting it as user traffic or starting anything."""
        if self.best is not None and now_ms <= self.trust_until_ms:
            return SendPlan(self.best, False, _NO_ACTIONS)
        return SendPlan(self.best, True, _NO_ACTIONS)

    def cur_addr(self, now_ms: int) -> "Addr | None":
        """The direct address in use (trusted), else None: what `status` shows as CurAddr."""
        if self.best is not None and now_ms <= self.trust_until_ms:
            return self.best
        return None

    def ping_received(self, addr: "Addr", txid: bytes, now_ms: int) -> bool:
        """A disco ping arrived over UDP from `addr`; False if it repeats the last txid (no second pong).

        An unknown address becomes a candidate, kept 45 s after its last ping.
        """
        c = self.candidates.get(addr)
        if c is None:
            self._prune_ping_learned(now_ms)
            c = self.candidates[addr] = Candidate(addr, FROM_PING)
        elif c.last_got_ping_txid == txid:
            return False
        c.sources |= FROM_PING
        c.last_got_ping_ms = now_ms
        c.last_got_ping_txid = txid
        return True

    def ping_back(self, addr: "Addr", now_ms: int) -> "list[Action]":
        """After a UDP ping from `addr` (`ping_received` said True): ping it back if no direct path is
        trusted yet, at most once a second per address.

        Not in Tailscale, which waits for its next discovery round (5 s later): the peer's ping
        got through both NATs, so its NAT now holds a mapping towards us and our ping takes the
        same way back, whereas our first ping (sent with the CallMeMaybe) arrived before that
        mapping existed and was dropped. With two NATs this brings the side that started the
        discovery to a direct path one round trip later instead of 5 s.
        """
        if self.best is not None and now_ms <= self.trust_until_ms:
            return _NO_ACTIONS
        c = self.candidates.get(addr)
        if c is None:
            return _NO_ACTIONS
        if c.last_ping_back_ms is not None and now_ms - c.last_ping_back_ms < PING_BACK_INTERVAL_MS:
            return _NO_ACTIONS
        c.last_ping_back_ms = now_ms
        return [self._ping(addr, now_ms)]

    def _prune_ping_learned(self, now_ms: int) -> None:
        learned = [c for c in self.candidates.values() if c.sources == FROM_PING]
        for c in learned:
            if c.last_got_ping_ms is None or now_ms - c.last_got_ping_ms > SESSION_ACTIVE_TIMEOUT_MS:
                self._forget(c.addr)
        learned = [c for c in self.candidates.values() if c.sources == FROM_PING]
        if len(learned) >= MAX_PING_LEARNED:
            oldest = learned[0]
            for c in learned:
                if (c.last_got_ping_ms or 0) < (oldest.last_got_ping_ms or 0):
                    oldest = c
            self._forget(oldest.addr)

    def pong(self, txid: bytes, now_ms: int) -> "PongResult | None":
        """A pong over UDP with `txid`; None if it answers no ping of ours to this peer (§6.3).

        The address that counts is the one the ping went to, not where the pong came from.
        """
        sent = self.pings.pop(txid, None)
        if sent is None:
            return None
        addr, sent_ms = sent
        if now_ms - sent_ms > PING_TIMEOUT_MS:
            return None
        latency = now_ms - sent_ms
        c = self.candidates.get(addr)
        if c is None:
            return PongResult(addr, latency, False)  # the address is no candidate any more: no path
        c.latencies_ms.append(latency)
        if len(c.latencies_ms) > _PONG_HISTORY:
            c.latencies_ms.pop(0)
        if better_addr(addr, latency, self.best, self.best_latency_ms):
            self.best = addr
        if addr == self.best:
            self.best_latency_ms = latency
            self.trust_until_ms = now_ms + TRUST_UDP_ADDR_MS
            self._trusted_plan = SendPlan(addr, False, _NO_ACTIONS)
        return PongResult(addr, latency, addr == self.best)

    def cli_ping(self, now_ms: int) -> "list[Action]":
        """`meshlet ping`: a ping to the best path (trusted or not), and a discovery round when it is not
        trusted, so that repeated CLI pings find a direct path as Tailscale's do."""
        self._expire_learned(now_ms)
        out: "list[Action]" = []
        if self.best is not None:
            out.append(self._ping(self.best, now_ms))
        if self.best is None or now_ms > self.trust_until_ms:
            out.extend(self._discovery(now_ms, True))
        return out

    def next_deadline_ms(self) -> "int | None":
        """When `tick` wants to run next (None: idle, nothing scheduled)."""
        return self.next_heartbeat_ms

    def tick(self, now_ms: int) -> "list[Action]":
        """The heartbeat (§6.2); call it at `next_deadline_ms` (early or late calls are harmless)."""
        self._expire_pings(now_ms)
        due = self.next_heartbeat_ms
        if due is None or now_ms < due:
            return _NO_ACTIONS
        if self.last_send_ms is None or now_ms - self.last_send_ms > SESSION_ACTIVE_TIMEOUT_MS:
            self.next_heartbeat_ms = None  # idle: the next send starts it again
            return _NO_ACTIONS
        self.next_heartbeat_ms = now_ms + HEARTBEAT_INTERVAL_MS
        self._expire_learned(now_ms)  # a best that expired gets no heartbeat
        out: "list[Action]" = []
        if self.best is not None:
            out.append(self._ping(self.best, now_ms))
        if self._wants_full_ping(now_ms):
            out.extend(self._discovery(now_ms, True))
        return out

    # --- internals ----------------------------------------------------------------

    def _wants_full_ping(self, now_ms: int) -> bool:
        if self.best is None or self.last_full_ping_ms is None:
            return True
        if now_ms > self.trust_until_ms:
            return True
        if self.best_latency_ms <= GOOD_ENOUGH_LATENCY_MS:
            return False
        return now_ms - self.last_full_ping_ms >= UPGRADE_INTERVAL_MS

    def _discovery(self, now_ms: int, call_me_maybe: bool) -> "list[Action]":
        """Pings every candidate not pinged in the last 5 s; a CallMeMaybe if any ping went out."""
        self.last_full_ping_ms = now_ms
        self._expire_learned(now_ms)
        out: "list[Action] | None" = None
        for addr, c in self.candidates.items():  # _ping adds no candidate and removes none
            if c.last_ping_ms is not None and now_ms - c.last_ping_ms < DISCO_PING_INTERVAL_MS:
                continue
            if out is None:
                out = []
            out.append(self._ping(addr, now_ms))
        if out is None:
            return _NO_ACTIONS
        if call_me_maybe:
            out.append(Action(ACTION_CALL_ME_MAYBE))
        return out

    def _expire_learned(self, now_ms: int) -> None:
        """Forgets addresses known only from pings that last pinged us more than 45 s ago."""
        expired = [
            addr
            for addr, c in self.candidates.items()
            if c.sources == FROM_PING
            and (c.last_got_ping_ms is None or now_ms - c.last_got_ping_ms > SESSION_ACTIVE_TIMEOUT_MS)
        ]
        for addr in expired:
            self._forget(addr)

    def _ping(self, addr: "Addr", now_ms: int) -> Action:
        self._expire_pings(now_ms)
        txid = self._random_bytes(TXID_LEN)
        self.pings[txid] = (addr, now_ms)
        c = self.candidates.get(addr)
        if c is not None:
            c.last_ping_ms = now_ms
        return Action(ACTION_PING, addr, txid)

    def _expire_pings(self, now_ms: int) -> None:
        if not self.pings:
            return
        for txid in [t for t, (_, sent) in self.pings.items() if now_ms - sent > PING_TIMEOUT_MS]:
            del self.pings[txid]
