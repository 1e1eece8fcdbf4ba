"""Two core objects wired together in memory, under a clock the test steps by hand.

`Pair` works for any object with the core's datagram shape:
`receive_datagram(data, src, now_ms)`, `transmits() -> [(via, dest, data)]`,
`handle_timer(now_ms)` and `next_deadline()`. A datagram sent to the other
side's address is delivered; anything else is kept in `undelivered`. Every
datagram sent is recorded in `sent` as (sender name "a" or "b", dest, data,
now_ms), so tests can replay, reorder, count or time them. Losing datagrams is one line:
`p.lose = lambda name, data: ...` returning True to drop.

`wg_pair()` builds two WireGuard devices configured as each other's peer,
and `ipv4_packet`/`ipv6_packet` build the minimal IP packets they carry.

MicroPython-safe: no pytest, no typing at run time.
"""

from .clock import FakeClock
from .rand import FakeRandom

A_ADDR = (b"\xc0\x00\x02\x01", 51820)  # 192.0.2.1, TEST-NET-1
B_ADDR = (b"\xc0\x00\x02\x02", 51820)  # 192.0.2.2
A_IP4 = b"\x0a\x00\x00\x01"  # 10.0.0.1
B_IP4 = b"\x0a\x00\x00\x02"  # 10.0.0.2
A_IP6 = b"\xfd\x00" + bytes(13) + b"\x01"  # fd00::1
B_IP6 = b"\xfd\x00" + bytes(13) + b"\x02"  # fd00::2
UNIX_MS = 1_700_000_000_000  # 2023-11-14, the wall clock both devices start with

_KEYS = {}  # seed -> NodePrivate, so public keys are computed once per run


class Pair:
    """Devices `a` at `a_addr` and `b` at `b_addr`, sharing `clock`."""

    def __init__(self, a, b, a_addr, b_addr, clock):  # type: ignore[no-untyped-def]
        self.a = a
        self.b = b
        self.a_addr = a_addr
        self.b_addr = b_addr
        self.clock = clock
        self.sent = []
        self.undelivered = []
        self.lose = None

    def _step(self):  # type: ignore[no-untyped-def]
        moved = 0
        for name, src, src_addr, dst, dst_addr in (
            ("a", self.a, self.a_addr, self.b, self.b_addr),
            ("b", self.b, self.b_addr, self.a, self.a_addr),
        ):
            for _via, dest, data in src.transmits():
                self.sent.append((name, dest, data, self.clock.now_ms))
                if dest != dst_addr:
                    self.undelivered.append((name, dest, data))
                    continue
                if self.lose is not None and self.lose(name, data):
                    continue
                dst.receive_datagram(data, src_addr, self.clock.now_ms)
                moved += 1
        return moved

    def pump(self, limit=100):  # type: ignore[no-untyped-def]
        """Delivers datagrams both ways until neither side has any; returns how many moved."""
        moved = 0
        for _ in range(limit):
            n = self._step()
            if not n:
                return moved
            moved += n
        raise AssertionError("the pair kept talking for %d rounds" % limit)

    def next_deadline(self):  # type: ignore[no-untyped-def]
        best = None
        for d in (self.a.next_deadline(), self.b.next_deadline()):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def run_until(self, t_ms, limit=10_000):  # type: ignore[no-untyped-def]
        """Fires every deadline up to `t_ms` in order, pumping after each; ends at `t_ms`."""
        self.pump()
        for _ in range(limit):
            d = self.next_deadline()
            if d is None or d > t_ms:
                break
            if d > self.clock.now_ms:
                self.clock.now_ms = d
            self.a.handle_timer(self.clock.now_ms)
            self.b.handle_timer(self.clock.now_ms)
            self.pump()
        else:
            raise AssertionError("deadlines did not settle before %d" % t_ms)
        if t_ms > self.clock.now_ms:
            self.clock.now_ms = t_ms

    def advance(self, ms):  # type: ignore[no-untyped-def]
        """Moves time on by `ms`, running every timer on the way."""
        self.run_until(self.clock.now_ms + ms)

    def sent_by(self, name, kind=None):  # type: ignore[no-untyped-def]
        """Datagrams `name` sent, optionally only those of WireGuard message type `kind`."""
        return [d for n, _, d, _ in self.sent if n == name and (kind is None or d[0] == kind)]

    def times_of(self, name, kind=None, size=None):  # type: ignore[no-untyped-def]
        """When `name` sent datagrams of type `kind` (and length `size`, e.g. 32 for keepalives)."""
        return [
            t
            for n, _, d, t in self.sent
            if n == name and (kind is None or d[0] == kind) and (size is None or len(d) == size)
        ]


def node_key(seed):  # type: ignore[no-untyped-def]
    from meshlet.key import NodePrivate

    key = _KEYS.get(seed)
    if key is None:
        key = _KEYS[seed] = NodePrivate.generate(FakeRandom(1000 + seed))
    return key


def wg_pair(  # type: ignore[no-untyped-def]
    seed=1, psk_a=None, psk_b=None, endpoints=True, keepalive_s=0, b_kwargs=None, b_key=2, **kwargs
):
    """Devices a (10.0.0.1, fd00::1) and b (10.0.0.2, fd00::2), each the other's peer.

    Args:
        seed: picks the randomness (keys stay the same across seeds).
        psk_a, psk_b: the preshared key each side configures.
        endpoints: if False, b does not know a's address (it learns it from
            a's first initiation, as a server would).
        keepalive_s: a's persistent keepalive towards b.
        b_kwargs: passed to b's Device constructor only, overriding kwargs.
        b_key: the node_key seed a believes b has (b always has 2): another
            value configures a with the wrong peer key.
        kwargs: passed to both Device constructors.
    """
    from meshlet.wg.device import Device, PeerConfig

    clock = FakeClock(0)
    ka, kb = node_key(1), node_key(2)
    kw_b = dict(kwargs)
    kw_b.update(b_kwargs or {})
    a = Device(ka, FakeRandom(seed * 2), UNIX_MS, 0, **kwargs)
    b = Device(kb, FakeRandom(seed * 2 + 1), UNIX_MS, 0, **kw_b)
    a.set_peer(PeerConfig(node_key(b_key).public(), [(B_IP4, 32), (B_IP6, 128)], B_ADDR, psk_a, keepalive_s))
    b.set_peer(PeerConfig(ka.public(), [(A_IP4, 32), (A_IP6, 128)], A_ADDR if endpoints else None, psk_b))
    return Pair(a, b, A_ADDR, B_ADDR, clock)


def ipv4_packet(src, dst, payload=b"", proto=17):  # type: ignore[no-untyped-def]
    """A minimal IPv4 packet (checksum left zero: WireGuard does not look at it)."""
    total = 20 + len(payload)
    header = bytes((0x45, 0, total >> 8, total & 0xFF, 0, 0, 0x40, 0, 64, proto, 0, 0))
    return header + src + dst + payload


def ipv6_packet(src, dst, payload=b"", next_header=59):  # type: ignore[no-untyped-def]
    """A minimal IPv6 packet (next header 59: no next header)."""
    n = len(payload)
    return bytes((0x60, 0, 0, 0, n >> 8, n & 0xFF, next_header, 64)) + src + dst + payload
