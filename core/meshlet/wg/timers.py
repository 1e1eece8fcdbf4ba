"""The whitepaper's timers (§6) as deadlines: data, not threads.

wireguard-go (after the kernel's timers.c) runs five timers per peer and
moves them from hooks named for what just happened. Here each timer is a
deadline in ms or None, the hooks are methods that move deadlines, and the
device asks `expired(now_ms)` which ones have passed and acts on them:

    timer                  armed by                                 on expiry
    retransmit_handshake   an initiation was sent (5 s + jitter)    resend, or give up after 18 retries
    send_keepalive         data received, if not armed (10 s)       send a keepalive
    new_handshake          data sent, if not armed (15 s + jitter)  start a handshake (the peer went quiet)
    zero_key_material      a session was derived (540 s)            erase every key
    persistent_keepalive   any authenticated packet in or out       send a keepalive

and the disarming hooks: anything authenticated sent cancels the keepalive
(it was one); anything authenticated received cancels new_handshake (the
peer is alive); a completed handshake cancels the retransmit.

Giving up follows wireguard-go exactly: the retransmit timer counts attempts
and gives up when the count *exceeds* MAX_TIMER_HANDSHAKES, so a handshake
is sent 20 times in all (the first and 19 retries, about 95 s) before
`give_up` flushes the queue and schedules key zeroing.

Jitter (0..333 ms) comes from the device's randomness through `jitter_ms()`,
drawn only when a jittered timer is armed, never per packet.
"""

from .._compat import TYPE_CHECKING, const
from .constants import (
    KEEPALIVE_TIMEOUT_MS,
    MAX_TIMER_HANDSHAKES,
    REKEY_TIMEOUT_MS,
    ZERO_KEY_MATERIAL_AFTER_MS,
)

if TYPE_CHECKING:
    from typing import Callable

RETRANSMIT_HANDSHAKE = const(1)
SEND_KEEPALIVE = const(2)
NEW_HANDSHAKE = const(3)
ZERO_KEY_MATERIAL = const(4)
PERSISTENT_KEEPALIVE = const(5)


class PeerTimers:
    """One peer's deadlines and the counters wireguard-go keeps beside them.

    Args:
        jitter_ms: returns a fresh jitter in 0..333 ms.
        persistent_keepalive_s: 0 for none.
    """

    __slots__ = (
        "retransmit_handshake_ms",
        "send_keepalive_ms",
        "new_handshake_ms",
        "zero_key_material_ms",
        "persistent_keepalive_ms",
        "handshake_attempts",
        "need_another_keepalive",
        "sent_last_minute_handshake",
        "persistent_keepalive_s",
        "_jitter_ms",
    )

    def __init__(self, jitter_ms: "Callable[[], int]", persistent_keepalive_s: int = 0) -> None:
        self.retransmit_handshake_ms: "int | None" = None
        self.send_keepalive_ms: "int | None" = None
        self.new_handshake_ms: "int | None" = None
        self.zero_key_material_ms: "int | None" = None
        self.persistent_keepalive_ms: "int | None" = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.persistent_keepalive_s = persistent_keepalive_s
        self._jitter_ms = jitter_ms

    # --- hooks: call after the event their name says -------------------------

    def data_sent(self, now_ms: int) -> None:
        """A data packet (not a keepalive) was sent: expect to hear back within 15 s."""
        if self.new_handshake_ms is None:
            self.new_handshake_ms = now_ms + KEEPALIVE_TIMEOUT_MS + REKEY_TIMEOUT_MS + self._jitter_ms()

    def data_received(self, now_ms: int) -> None:
        """A data packet (not a keepalive) arrived: answer within 10 s, with a keepalive if need be."""
        if self.send_keepalive_ms is None:
            self.send_keepalive_ms = now_ms + KEEPALIVE_TIMEOUT_MS
        else:
            self.need_another_keepalive = True

    def any_authenticated_packet_sent(self) -> None:
        self.send_keepalive_ms = None

    def any_authenticated_packet_received(self) -> None:
        self.new_handshake_ms = None

    def any_authenticated_packet_traversal(self, now_ms: int) -> None:
        if self.persistent_keepalive_s:
            self.persistent_keepalive_ms = now_ms + self.persistent_keepalive_s * 1000

    def handshake_initiated(self, now_ms: int) -> None:
        self.retransmit_handshake_ms = now_ms + REKEY_TIMEOUT_MS + self._jitter_ms()

    def handshake_complete(self) -> None:
        self.retransmit_handshake_ms = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False

    def session_derived(self, now_ms: int) -> None:
        self.zero_key_material_ms = now_ms + ZERO_KEY_MATERIAL_AFTER_MS

    # --- expiry ---------------------------------------------------------------

    def next_deadline(self) -> "int | None":
        best = None
        for t in (
            self.retransmit_handshake_ms,
            self.send_keepalive_ms,
            self.new_handshake_ms,
            self.zero_key_material_ms,
            self.persistent_keepalive_ms,
        ):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def expired(self, now_ms: int) -> "list[int]":
        """The timers due at `now_ms`, disarmed, in a fixed order."""
        out = []
        if _due(self.retransmit_handshake_ms, now_ms):
            self.retransmit_handshake_ms = None
            out.append(RETRANSMIT_HANDSHAKE)
        if _due(self.send_keepalive_ms, now_ms):
            self.send_keepalive_ms = None
            out.append(SEND_KEEPALIVE)
        if _due(self.new_handshake_ms, now_ms):
            self.new_handshake_ms = None
            out.append(NEW_HANDSHAKE)
        if _due(self.zero_key_material_ms, now_ms):
            self.zero_key_material_ms = None
            out.append(ZERO_KEY_MATERIAL)
        if _due(self.persistent_keepalive_ms, now_ms):
            self.persistent_keepalive_ms = None
            out.append(PERSISTENT_KEEPALIVE)
        return out

    def should_retry(self) -> bool:
        """The retransmit timer fired: True to resend (counted), False to give up."""
        if self.handshake_attempts > MAX_TIMER_HANDSHAKES:
            return False
        self.handshake_attempts += 1
        return True

    def give_up(self, now_ms: int) -> None:
        """The handshake failed for good: no keepalive, keys erased in 540 s unless already due."""
        self.send_keepalive_ms = None
        if self.zero_key_material_ms is None:
            self.zero_key_material_ms = now_ms + ZERO_KEY_MATERIAL_AFTER_MS

    def keepalive_sent(self, now_ms: int) -> None:
        """The send_keepalive timer's keepalive went out; re-arm if more data came meanwhile."""
        if self.need_another_keepalive:
            self.need_another_keepalive = False
            self.send_keepalive_ms = now_ms + KEEPALIVE_TIMEOUT_MS

    def clear(self) -> None:
        """Disarms everything (the peer was removed or zeroed)."""
        self.retransmit_handshake_ms = None
        self.send_keepalive_ms = None
        self.new_handshake_ms = None
        self.zero_key_material_ms = None
        self.persistent_keepalive_ms = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False


def _due(deadline: "int | None", now_ms: int) -> bool:
    return deadline is not None and deadline <= now_ms
