"""TAI64N timestamps: label, whitening, order, and never going backwards (wireguard.md §1, §6)."""

from meshlet.wg.tai64n import WallClock, later_than, tai64n
from meshlet_testing.vectors import unhex


def test_label_and_whitening():
    # 1700000000.123 s: seconds 2^62 + 10 + 1700000000, 123,000,000 ns whitened to 117,440,512.
    assert tai64n(1_700_000_000_123) == unhex("40 00 00 00 65 53 f1 0a  07 00 00 00")
    assert tai64n(0) == unhex("40 00 00 00 00 00 00 0a  00 00 00 00")


def test_byte_order_is_time_order():
    stamps = [tai64n(1_700_000_000_000 + 17 * i) for i in range(200)]
    assert stamps == sorted(stamps)
    assert tai64n(1_700_000_001_000) > tai64n(1_700_000_000_999)


def test_later_than_steps_one_whitened_unit_and_carries():
    s = tai64n(1_700_000_000_000)
    assert later_than(s) == unhex("40 00 00 00 65 53 f1 0a  01 00 00 00")
    top = unhex("40 00 00 00 65 53 f1 0a  3b 00 00 00")  # 59 * 2^24 ns, the last unit of the second
    assert later_than(top) == unhex("40 00 00 00 65 53 f1 0b  00 00 00 00")


def test_wall_clock_follows_now_ms():
    c = WallClock(1_700_000_000_000, 5_000)
    assert c.unix_ms(5_000) == 1_700_000_000_000
    assert c.unix_ms(65_000) == 1_700_000_060_000
    assert c.stamp(65_000) == tai64n(1_700_000_060_000)


def test_a_clock_set_back_does_not_make_stamps_go_back():
    c = WallClock(1_700_000_000_000, 0)
    first = c.stamp(10_000)
    c.set(1_600_000_000_000, 20_000)  # NTP stepped the clock back by a lot
    second = c.stamp(20_000, first)
    assert second > first
    assert second == later_than(first)
    c.set(1_800_000_000_000, 30_000)  # and forward again: plain wall clock
    assert c.stamp(30_000, second) == tai64n(1_800_000_000_000)
