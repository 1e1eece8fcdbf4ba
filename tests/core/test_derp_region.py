"""Home-region selection (derp.md §9) on hand-made latency reports.

The scenarios follow the behaviours Tailscale's netcheck documents: the best
latency over the last five minutes wins, an old home is kept unless the new
one is at least 10 ms and a third faster, recent DERP traffic counts as
reachability, control can force a region, and a home that still sends
keep-alives survives a report with no data. Latencies are microseconds.
"""

from meshlet.derp.region import (
    HISTORY_MAX_AGE_MS,
    PREFERRED_DERP_FRAME_TIME_MS,
    PREFERRED_DERP_KEEP_ALIVE_TIMEOUT_MS,
    HomeRegion,
    fallback_home,
    region_latencies,
)
from meshlet_testing.rand import FakeRandom

S = 1_000_000  # one second in microseconds
MS = 1_000  # one millisecond in microseconds
T0 = 123_000  # ms


def _run(steps, scores=None, force=0, heard=None):
    """Feeds (after_ms, report) steps; each report starts 100 ms before it ends. Returns the chooser."""
    home = HomeRegion(scores, force)
    now = T0
    for after_ms, report in steps:
        now += after_ms
        home.update(report, now, now - 100, heard)
    return home


def test_history_limits():
    assert HISTORY_MAX_AGE_MS == 305_000
    assert PREFERRED_DERP_FRAME_TIME_MS == 8_000
    assert PREFERRED_DERP_KEEP_ALIVE_TIMEOUT_MS == 120_000


def test_the_fastest_region_wins_the_first_report():
    h = _run([(0, {1: 2 * S, 2: 3 * S})])
    assert (h.home, len(h.history)) == (1, 1)
    assert _run([(0, {})]).home == 0


def test_best_recent_latency_counts_not_just_this_report():
    h = _run([(0, {1: 2 * S, 2: 3 * S}), (1000, {1: 4 * S, 2: 3 * S})])
    assert (h.home, len(h.history)) == (1, 2)  # region 1's 2 s of a second ago still counts


def test_a_region_missing_from_this_report_cannot_win():
    steps = [(0, {1: 2 * S, 2: 3 * S}), (1000, {1: 4 * S, 2: 3 * S}), (1000, {2: 3 * S})]
    h = _run(steps)
    assert (h.home, len(h.history)) == (2, 3)
    steps.append((1000, {1: 4 * S, 2: 3 * S}))  # back, with its 2 s still in the history
    h = _run(steps)
    assert (h.home, len(h.history)) == (1, 4)


def test_old_reports_are_forgotten():
    steps = [(0, {1: S, 2: 2 * S})] * 4 + [(10 * 60_000, {3: 3 * S})]
    h = _run(steps)
    assert (h.home, len(h.history)) == (3, 1)
    h = HomeRegion()
    h.update({1: 5 * MS}, 0)
    h.update({2: 9 * MS}, HISTORY_MAX_AGE_MS)  # exactly at the limit: kept
    assert len(h.history) == 2
    h.update({2: 9 * MS}, HISTORY_MAX_AGE_MS + 1)
    assert [t for t, _ in h.history] == [HISTORY_MAX_AGE_MS, HISTORY_MAX_AGE_MS + 1]


def test_stickiness_needs_a_third_faster():
    assert _run([(0, {1: 4 * S, 2: 5 * S}), (1000, {1: 4 * S, 2: 3 * S})]).home == 1  # 3 > 4 * 2/3
    assert _run([(0, {1: 4 * S, 2: 5 * S}), (1000, {1: 4 * S, 2: S})]).home == 2
    assert (
        _run([(0, {1: 34 * MS, 2: 35 * MS}), (1000, {1: 34 * MS, 2: 23 * MS})]).home == 1
    )  # 11 ms, but > 2/3


def test_stickiness_needs_ten_milliseconds():
    assert _run([(0, {1: 4 * MS, 2: 5 * MS}), (1000, {1: 4 * MS, 2: MS})]).home == 1  # 75 % faster, 3 ms
    assert _run([(0, {1: 40 * MS, 2: 50 * MS}), (1000, {1: 40 * MS, 2: 10 * MS})]).home == 2


def test_region_scores_scale_latencies():
    two_thirds = {1: 2.0 / 3}
    assert _run([(1000, {1: 10 * S, 2: 8 * S})], two_thirds).home == 1  # 6.67 s vs 8 s
    assert _run([(1000, {1: 100 * S, 2: 10 * S})], two_thirds).home == 2
    assert _run([(1000, {1: 4 * S, 2: 5 * S})], {1: 0.0, 2: -1.0}).home == 1  # ignored


def test_recent_derp_traffic_keeps_an_unmeasured_home():
    steps = [(0, {1: 2 * S, 2: 3 * S}), (2000, {1: 4 * S, 2: 3 * S}), (2000, {2: 3 * S})]
    end = T0 + 4000
    assert _run(steps, heard={1: end - PREFERRED_DERP_FRAME_TIME_MS + 1}).home == 1
    assert _run(steps, heard={1: end - 50}).home == 1  # after the report started
    assert _run(steps, heard={1: end - PREFERRED_DERP_FRAME_TIME_MS - 1}).home == 2


def test_a_forced_region_wins_when_reachable():
    assert _run([(1000, {1: 2 * S, 2: 3 * S}), (1000, {1: 4 * S, 2: 3 * S})], force=2).home == 2
    assert _run([(1000, {1: 2 * S, 2: S}), (1000, {1: 4 * S})], force=2).home == 1  # 2 not reachable now
    steps = [(1000, {1: 2 * S}), (1000, {1: 4 * S})]
    assert _run(steps, force=2, heard={1: T0, 2: T0 + 1000}).home == 2  # heard from, not probed
    steps = [(1000, {1: 2 * S}), (PREFERRED_DERP_FRAME_TIME_MS + 1000, {1: 4 * S})]
    assert _run(steps, force=2, heard={1: T0, 2: T0}).home == 1  # silent too long


def test_a_home_that_sends_keep_alives_survives_an_empty_report():
    steps = [(0, {1: 2 * S, 2: 3 * S}), (30_000, {})] + [(2000, {})] * 4
    h = _run(steps, heard={1: T0})
    assert (h.home, len(h.history)) == (1, 6)
    steps = [(0, {1: 2 * S, 2: 3 * S}), (30_000, {}), (PREFERRED_DERP_KEEP_ALIVE_TIMEOUT_MS, {})]
    h = _run(steps, heard={1: T0})
    assert (h.home, len(h.history)) == (0, 3)


def test_the_home_is_frozen_while_it_may_not_change():
    h = HomeRegion()
    assert h.update({1: 50 * MS, 2: 60 * MS}, 0, may_change=False) == 1  # picking a first one is allowed
    assert h.update({1: 500 * MS, 2: 10 * MS}, 1000, may_change=False) == 1
    assert h.update({1: 500 * MS, 2: 10 * MS}, 2000) == 2


def test_region_latencies_takes_the_best_sample():
    samples = [(1, 900), (2, 30_000), (1, 700), (3, 5), (1, 800), (2, 29_000)]
    assert region_latencies(samples) == {1: 700, 2: 29_000, 3: 5}
    assert region_latencies([]) == {}


def test_fallback_home():
    assert fallback_home([1, 2, 3], 2, FakeRandom(1)) == 2
    assert fallback_home([], 0, FakeRandom(1)) == 0

    def fixed(value):
        return lambda n: value.to_bytes(n, "big")

    assert fallback_home([30, 10, 20], 0, fixed(0)) == 10
    assert fallback_home([30, 10, 20], 0, fixed(4)) == 20  # 4 % 3 = 1 of the sorted ids
    assert fallback_home([30, 10, 20], 0, fixed(0xFFFFFFFF)) == 10  # 4294967295 % 3 = 0
