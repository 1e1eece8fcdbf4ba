"""The DERP reconnect schedule: n^2 * 10 ms capped at 5 s, spread over [0.5, 1.5)."""

from meshlet.derp.backoff import BASE_MS, MAX_BACKOFF_MS, Backoff
from meshlet_testing.rand import FakeRandom


def _fixed(value):
    """A random source that always returns `value` as its two bytes."""
    return lambda n: value.to_bytes(n, "big")


def test_the_middle_of_the_jitter_is_the_base_schedule():
    b = Backoff(_fixed(0x8000))
    assert (BASE_MS, MAX_BACKOFF_MS) == (10, 5000)
    got = [b.failed() for _ in range(25)]
    assert got[:10] == [10, 40, 90, 160, 250, 360, 490, 640, 810, 1000]
    assert got[21] == 4840  # 22 * 22 * 10
    assert got[22:] == [5000, 5000, 5000]  # 23 * 23 * 10 = 5290, capped
    assert b.failures == 25


def test_jitter_bounds():
    low = Backoff(_fixed(0))
    assert [low.failed() for _ in range(3)] == [5, 20, 45]  # exactly 0.5x
    high = Backoff(_fixed(0xFFFF))
    assert [high.failed() for _ in range(3)] == [14, 59, 134]  # just under 1.5x (15, 60, 135)
    for _ in range(30):
        high.failed()
    assert high.failed() == 5000 * (32768 + 65535) // 65536 == 7499


def test_reset_starts_over():
    b = Backoff(_fixed(0x8000))
    for _ in range(5):
        b.failed()
    b.reset()
    assert b.failures == 0
    assert b.failed() == 10


def test_seeded_randomness_stays_in_range_and_repeats():
    a = Backoff(FakeRandom(3))
    delays = [a.failed() for _ in range(40)]
    for n, d in enumerate(delays, 1):
        base = min(n * n * 10, 5000)
        assert base // 2 <= d < base * 3 // 2 + 1, (n, d)
    b = Backoff(FakeRandom(3))
    assert [b.failed() for _ in range(40)] == delays


def test_custom_limits():
    b = Backoff(_fixed(0x8000), max_ms=100, base_ms=20)
    assert [b.failed() for _ in range(4)] == [20, 80, 100, 100]


def test_the_failure_count_stops_growing_but_the_delay_stays_capped():
    b = Backoff(_fixed(0x8000))
    for _ in range(5000):
        d = b.failed()
    assert d == 5000
    assert b.failures == 1000
