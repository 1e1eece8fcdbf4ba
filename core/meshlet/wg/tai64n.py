"""TAI64N handshake timestamps (whitepaper §5.4.2; wireguard-go's `tai64n`).

12 bytes, big-endian, so byte order is time order:

    8b  seconds: 2^62 + 10 + unix seconds (the TAI64 label; the 10 s are TAI - UTC in 1972)
    4b  nanoseconds, with the low 24 bits zeroed ("whitening")

A responder drops an initiation whose timestamp is not strictly greater than
the last one it accepted from that peer, so a node's timestamps must never go
backwards, across restarts too. The core has no clock: the shell pins the
wall clock to its monotonic `now_ms` (`WallClock`), and a peer remembers the
last stamp it sent so that `later_than` can step past it if the wall clock was
set back (an NTP step on a board without an RTC). Whitening keeps stamps from
revealing the local clock more finely than about 17 ms.
"""

import struct

from .._compat import const

TAI64N_LEN = 12
_TAI64_BASE = const(0x400000000000000A)
_WHITENER = const(0xFFFFFF)
_NS_STEP = const(0x1000000)  # the smallest whitened increment, about 16.8 ms
_NS_PER_S = const(1_000_000_000)


def tai64n(unix_ms: int) -> bytes:
    """The whitened stamp for a wall-clock time in milliseconds since 1970."""
    seconds, ms = divmod(unix_ms, 1000)
    ns = ms * 1_000_000
    return struct.pack(">QI", _TAI64_BASE + seconds, ns & ~_WHITENER)


def later_than(stamp: bytes) -> bytes:
    """The smallest whitened stamp after `stamp`."""
    seconds, ns = struct.unpack(">QI", stamp)
    ns = (ns & ~_WHITENER) + _NS_STEP
    if ns >= _NS_PER_S:
        seconds, ns = seconds + 1, 0
    return struct.pack(">QI", seconds, ns)


class WallClock:
    """Maps the monotonic `now_ms` onto wall-clock time: unix = unix_ms + (now - now_ms).

    Args:
        unix_ms: the wall-clock time the shell read, in ms since 1970.
        now_ms: the monotonic time it read at the same moment.
    """

    __slots__ = ("_offset_ms",)

    def __init__(self, unix_ms: int, now_ms: int) -> None:
        self._offset_ms = unix_ms - now_ms

    def set(self, unix_ms: int, now_ms: int) -> None:
        """Re-pins the clock, e.g. after NTP stepped it."""
        self._offset_ms = unix_ms - now_ms

    def unix_ms(self, now_ms: int) -> int:
        return now_ms + self._offset_ms

    def stamp(self, now_ms: int, last: "bytes | None" = None) -> bytes:
        """The TAI64N for `now_ms`, strictly after `last` if one is given."""
        out = tai64n(now_ms + self._offset_ms)
        if last is not None and out <= last:
            out = later_than(last)
        return out
