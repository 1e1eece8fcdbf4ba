"""Choosing the home DERP region from latency reports, with Tailscale's stickiness (derp.md §9).

A netcheck report is, for this purpose, a map region id -> latency: the
best STUN round trip to any node of the region, or the HTTPS latency when
UDP is blocked. `region_latencies` turns raw samples into one. `HomeRegion`
keeps the recent reports and picks the home the way Tailscale's netcheck
(`addReportHistoryAndSetPreferredDERP`) does:

1. Keep the reports of the last 5 min 5 s (a full report every 5 min, plus
   one report's timeout) and take each region's best latency over them,
   multiplied by the DERP map's `HomeParams.RegionScore[region]` if > 0.
2. Among the regions in the *current* report (the ones reachable now),
   pick the lowest of those; ties go to the lower region id (Go's map order
   is random).
3. Stickiness. If that changes the home and the old home is still
   reachable (it is in this report, or a DERP frame came from it since the
   report started or in the last 8 s), keep the old one when the old home's
   current latency minus the best is under 10 ms, or when the best is more
   than 2/3 of the old home's current latency. An old home missing from the
   report counts as latency 0 there, so recent DERP traffic alone keeps it.
4. A region forced by control (`ForcePreferredDERP`) wins if it is in the
   report or was heard from recently (same test as above).
5. If nothing was measured but the old home sent a frame within 120 s (two
   keep-alives), keep it rather than dropping to no home at all.

Latencies are integer microseconds (`_us`): loopback and LAN round trips are
well under a millisecond, and a zero latency would read as "none". Times are
the core's `now_ms`.
"""

from .._compat import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Callable, Iterable

# Tailscale net/netcheck (v1.90).
PREFERRED_DERP_ABSOLUTE_DIFF_US = 10_000  # preferredDERPAbsoluteDiff: smaller gains never move the home
PREFERRED_DERP_FRAME_TIME_MS = 8_000  # PreferredDERPFrameTime: a frame this recent means "still reachable"
PREFERRED_DERP_KEEP_ALIVE_TIMEOUT_MS = 120_000  # 2 x the DERP keep-alive
FULL_REPORT_INTERVAL_MS = 300_000
REPORT_TIMEOUT_MS = 5_000
HISTORY_MAX_AGE_MS = FULL_REPORT_INTERVAL_MS + REPORT_TIMEOUT_MS


def region_latencies(samples: "Iterable[tuple[int, int]]") -> "dict[int, int]":
    """The best latency per region from (region id, latency_us) samples."""
    best: "dict[int, int]" = {}
    for region, latency_us in samples:
        old = best.get(region)
        if old is None or latency_us < old:
            best[region] = latency_us
    return best


def fallback_home(region_ids: "list[int]", current: int, random_bytes: "Callable[[int], bytes]") -> int:
    """The home when nothing could be measured (magicsock's pickDERPFallback).

    Keeps `current` if there is one; otherwise picks one of `region_ids` at
    random; 0 if the map has no regions.
    """
    if current:
        return current
    if not region_ids:
        return 0
    ids = sorted(region_ids)
    return ids[int.from_bytes(random_bytes(4), "big") % len(ids)]


def _scaled(latency_us: int, scores: "dict[int, float]", region: int) -> int:
    score = scores.get(region, 0.0)
    return int(latency_us * score) if score > 0 else latency_us


def _heard_recently(last_ms: "int | None", start_ms: int, now_ms: int) -> bool:
    if last_ms is None:
        return False
    return last_ms > start_ms or last_ms > now_ms - PREFERRED_DERP_FRAME_TIME_MS


class HomeRegion:
    """The home-region chooser and its report history.

    Args:
        scores: HomeParams.RegionScore from the DERP map (region id ->
            multiplier; values <= 0 are ignored).
        force_region: control's ForcePreferredDERP, or 0.
        max_age_ms: how long a report counts.

    Attributes:
        home: the current home region id, 0 for none.
        history: [(now_ms, {region: latency_us})], oldest first.
    """

    def __init__(
        self,
        scores: "dict[int, float] | None" = None,
        force_region: int = 0,
        max_age_ms: int = HISTORY_MAX_AGE_MS,
    ) -> None:
        self.scores: "dict[int, float]" = dict(scores) if scores else {}
        self.force_region = force_region
        self.max_age_ms = max_age_ms
        self.home = 0
        self.history: "list[tuple[int, dict[int, int]]]" = []

    def update(
        self,
        latencies_us: "dict[int, int]",
        now_ms: int,
        start_ms: "int | None" = None,
        last_heard_ms: "dict[int, int] | None" = None,
        may_change: bool = True,
    ) -> int:
        """Adds a report and returns the (possibly new) home region, 0 for none.

        Args:
            latencies_us: this report: region id -> best latency.
            now_ms: when the report finished.
            start_ms: when it started (default `now_ms`).
            last_heard_ms: region id -> when a DERP frame last arrived from
                it (ClientConn.last_rx_ms); regions never heard from are absent.
            may_change: False while the node is not connected to control: an
                existing home is then kept, so peers do not lose it (derp.md §9).
        """
        start = now_ms if start_ms is None else start_ms
        heard = last_heard_ms or {}
        prev = self.home
        self._remember(latencies_us, now_ms)
        best_recent = self._best_recent()
        home = 0
        best_any = 0
        old_cur: "int | None" = None
        for region in sorted(latencies_us):
            if region == prev:
                old_cur = _scaled(latencies_us[region], self.scores, region)
            best = best_recent[region]
            if home == 0 or best < best_any:
                best_any = best
                home = region
        changing = prev != 0 and home != prev
        prev_heard = heard.get(prev) if prev else None
        if changing and (old_cur is not None or _heard_recently(prev_heard, start, now_ms)):
            old = old_cur or 0
            if old - best_any < PREFERRED_DERP_ABSOLUTE_DIFF_US or best_any > old // 3 * 2:
                home = prev
        force = self.force_region
        if force and (force in latencies_us or _heard_recently(heard.get(force), start, now_ms)):
            home = force
        if (
            home == 0
            and prev_heard is not None
            and prev_heard > now_ms - PREFERRED_DERP_KEEP_ALIVE_TIMEOUT_MS
        ):
            home = prev
        if not may_change and prev != 0:
            home = prev
        self.home = home
        return home

    def _remember(self, latencies_us: "dict[int, int]", now_ms: int) -> None:
        oldest = now_ms - self.max_age_ms
        self.history = [h for h in self.history if h[0] >= oldest]
        self.history.append((now_ms, dict(latencies_us)))

    def _best_recent(self) -> "dict[int, int]":
        best: "dict[int, int]" = {}
        for _, report in self.history:
            for region, latency_us in report.items():
                old = best.get(region)
                if old is None or latency_us < old:
                    best[region] = latency_us
        return {region: _scaled(latency_us, self.scores, region) for region, latency_us in best.items()}
