"""How long to wait before redialling a DERP server: jittered, growing, capped.

Tailscale's node backs off "up to ~5 s" between reconnects to a region
(shared/protocol/derp.md §8). Its schedule (util/backoff, used by magicsock's
DERP reader with a 5 s cap) grows with the square of the number of
consecutive failures, which it calls "a little smoother than the common
choice of 2^n", and spreads each delay over 0.5x-1.5x so that many nodes
cut off together do not return together:

    failure n     1     2     3     4      5      10      23+
    base (ms)    10    40    90   160    250    1000    5000 (the cap)
    delay        base * [0.5, 1.5)

`Backoff` is that schedule with the randomness injected and integer
milliseconds, so the shell only sleeps: `delay_ms = backoff.failed()` after
a failure, `backoff.reset()` once a connection has proved itself.
"""

from .._compat import TYPE_CHECKING, const

if TYPE_CHECKING:
    from typing import Callable

MAX_BACKOFF_MS = 5_000  # magicsock's cap for DERP reconnects
BASE_MS = 10  # util/backoff: n^2 * 10 ms
_MAX_COUNTED = const(1000)  # beyond this many failures the delay is the cap anyway; keeps ints small


class Backoff:
    """A reconnect schedule.

    Args:
        random_bytes: `random_bytes(n)`; two bytes are used per delay.
        max_ms: the cap on the base delay (the jittered delay may reach 1.5x).
        base_ms: the first base delay; the n-th is n*n*base_ms.

    Attributes:
        failures: consecutive failures since the last reset.
    """

    __slots__ = ("_random_bytes", "max_ms", "base_ms", "failures")

    def __init__(
        self, random_bytes: "Callable[[int], bytes]", max_ms: int = MAX_BACKOFF_MS, base_ms: int = BASE_MS
    ) -> None:
        self._random_bytes = random_bytes
        self.max_ms = max_ms
        self.base_ms = base_ms
        self.failures = 0

    def failed(self) -> int:
        """Counts a failure; returns how long to wait before the next attempt, in ms."""
        if self.failures < _MAX_COUNTED:
            self.failures += 1
        n = self.failures
        base = min(n * n * self.base_ms, self.max_ms)
        r = int.from_bytes(self._random_bytes(2), "big")  # 0..65535
        return base * (32768 + r) // 65536  # base * [0.5, 1.5)

    def reset(self) -> None:
        """Back to the shortest delay (after a connection that worked)."""
        self.failures = 0
