"""Surges (DESIGN "Surge"): a whole district reporting one category far above its own baseline.

Reports are grouped by key = (H3 region at `region_resolution`, category, language). Per key:

- the *short-term rate* is the exact count of the key's reports with event time in
  (now - short_window, now], divided by the window in minutes;
- the *baseline* is an EWMA (half-life `baseline_half_life_s`) of per-minute counts, folded one
  closed 1-minute bucket at a time in event time. A bucket is folded only once it lies wholly
  before the short window, so a burst never inflates its own baseline (STA/LTA style), and the
  EWMA is bias-corrected for the event time the detector has seen (an EWMA that started at 0
  an hour ago is divided by 1 - decay^60): right after a (re)start a busy district's baseline is
  its observed mean, not ~0, so steady traffic is not mistaken for a surge. Nothing is judged
  before `warmup_s` of event time has been seen;
- a surge *opens* when ratio = rate / max(baseline, floor) >= `min_ratio` and the window holds
  >= `min_count` reports from >= `min_independent` independent reporters (reporters and devices
  joined by a union-find, as for local incidents: one bot or one device farm counts once);
- it is *updated* when new independent reporters joined, at most once per `update_interval_s`;
- it is checked at every minute boundary of event time and *resolves* ("quiet") once it has been
  calm for `resolve_after_s`, calm meaning ratio < min_ratio / 2 or count < min_count / 2 (the
  halves give hysteresis, so a surge does not flap open/closed around the thresholds);
- after it resolves, that key cannot open another surge for `cooldown_s`.

Decisions depend on event time only, never on how often `advance` is called: timers (minute
checks, throttled updates, state sweeps) fire at their own due time with the state as of that
time, and the baseline only changes when a non-empty bucket is folded (empty minutes are decayed
in closed form), so any sequence of `advance` calls gives the same floats and the same bytes.

A key next to an open surge of its category (same or adjacent region, any language) joins it
instead of opening its own, at the levels that keep a surge open: one outbreak, one surge.

Events use the mean of the surge's regions' centres as lat/lon (a surge is a claim about a
district; its reports are spread over it), `cells` = its regions, `geometry` = their polygon,
`radius_m` = the circumradius of that area. The `surge` object reports `baseline_per_min` as
used in the ratio (so floored): `ratio == rate_per_min / baseline_per_min` up to rounding.

This module holds the parameters and the event-time loop (observe, timers, checkpoints);
surge_baseline.py counts and measures a key, surge_keys.py decides which keys are tracked and
sweeps them, surge_decisions.py opens, joins, updates and resolves surges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import h3
from h3.api.basic_int import latlng_to_cell as _latlng_to_cell

from geoincident.detectors.bounds import bounded, check
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.report import Report
from geoincident.detectors.surge_baseline import BUCKET_MS, Baseline, Key, KeyState
from geoincident.detectors.surge_decisions import UPDATE, Surges
from geoincident.detectors.surge_decisions import _Surge as _Surge  # stream/checkpoint.py
from geoincident.detectors.surge_keys import PROMOTE_AFTER, SWEEP, KeyTracker, entry_of
from geoincident.detectors.surge_keys import language_of as language_of
from geoincident.detectors.timers import Timers


@dataclass(frozen=True, slots=True)
class SurgeParams:
    """The `[surge]` section of the configuration: defaults and range rules of its keys."""

    enabled: bool = True
    region_resolution: int = bounded(6, ge=0, le=15)  # an H3 resolution
    short_window_s: float = bounded(300.0, gt=0)
    baseline_half_life_s: float = bounded(6 * 3600.0, gt=0)
    min_ratio: float = bounded(8.0, ge=1)
    min_count: int = bounded(30, ge=1)
    min_independent: int = bounded(10, ge=1)
    # 3 reports/hour per (district, category, language): below this an estimated rate is
    # indistinguishable from "never", and an empty baseline would make any burst infinite.
    baseline_floor_per_min: float = bounded(0.05, gt=0)
    cooldown_s: float = bounded(3600.0, ge=0)
    resolve_after_s: float = bounded(1800.0, ge=0)
    update_interval_s: float = bounded(60.0, ge=0)
    warmup_s: float = bounded(900.0, ge=0)

    def __post_init__(self) -> None:
        check(self, "surge")
        if self.min_count < PROMOTE_AFTER * self.min_ratio:
            # Keys below PROMOTE_AFTER reports per short window are not tracked (surge_keys):
            # that changes no decision only while such a key could never reach min_ratio.
            raise ValueError(
                f"surge.min_count must be at least {PROMOTE_AFTER} x surge.min_ratio "
                f"({PROMOTE_AFTER * self.min_ratio:g}), not {self.min_count!r}: below that, "
                "quiet districts that are not tracked could surge unseen"
            )

    @property
    def window_ms(self) -> int:
        return int(self.short_window_s * 1000)


class SurgeDetector:
    """`observe(report) -> events`, `advance(watermark_ms) -> events`, in event-time order.

    The caller feeds reports in event-time order (the Detector's ordered loop). A report behind
    the detector's clock but inside the short window is counted where it belongs and judged at
    the clock; an older one can no longer be in any window and is ignored.
    """

    def __init__(
        self,
        params: SurgeParams | None = None,
        *,
        cell_resolution: int = 10,
        max_report_ids: int = 200,
        shard_resolution: int | None = None,
    ) -> None:
        self.params = params = params or SurgeParams()
        self.clock_ms: int | None = None
        self.timers = Timers()
        self.baseline = Baseline(params)
        self.tracker = KeyTracker(params, self.baseline, self.timers)
        self.surges = Surges(
            params,
            self.baseline,
            self.tracker.keys,
            self.timers,
            cell_resolution=cell_resolution,
            max_report_ids=max_report_ids,
            shard_resolution=shard_resolution,
        )
        self._region_area: dict[int, float] = {}
        self._window_ms = params.window_ms
        self._region_resolution = params.region_resolution
        self._min_count = params.min_count

    # ------------------------------------------------------------------ public surface

    @property
    def state_keys(self) -> int:
        """(region, category, lang) keys held."""
        return len(self.tracker.keys)

    @property
    def state_reports(self) -> int:
        """Reports held in short windows."""
        return self.tracker.held_reports

    @property
    def open_surges(self) -> int:
        return len(self.surges.open)

    @property
    def _keys(self) -> dict[Key, KeyState]:
        return self.tracker.keys  # read by tests

    @property
    def _open_at(self) -> dict[tuple[int, str], _Surge]:
        return self.surges.open_at  # read by tests

    def observe(self, report: Report) -> list[IncidentEvent]:
        """Count one report; returns the events of timers due up to its event time, then its own."""
        if not self.params.enabled:
            return []
        ts_ms = report.ts_ms
        events: list[IncidentEvent] = []
        if self.clock_ms is None or ts_ms > self.clock_ms:
            timers = self.timers.heap
            if timers and timers[0][0] <= ts_ms:
                self._advance_to(ts_ms, events)
            else:
                self.clock_ms = ts_ms
        now = self.clock_ms
        assert now is not None
        if ts_ms <= now - self._window_ms:
            return events  # too old for any short window; a baseline is not worth a rewrite
        bucket = ts_ms // BUCKET_MS
        baseline = self.baseline
        if baseline.origin_bucket is None or bucket < baseline.origin_bucket:
            baseline.origin_bucket = bucket
        tracker = self.tracker
        key_id = tracker.key_of(report)
        key = tracker.keys.get(key_id)
        if key is None:
            key = tracker.hold_or_promote(key_id, report, now, sweep=True)
            if key is None:
                return events
            entry = entry_of(report)  # counted with the reports its key held
        else:
            entry = entry_of(report)
            # Baseline.count, inlined for the common case: in order, in the newest minute
            window = key.window
            pending = key.pending
            if window and entry >= window[-1] and pending and pending[-1][0] == bucket:
                window.append(entry)
                reporter = entry[2]
                reporters = key.reporters
                reporters[reporter] = reporters.get(reporter, 0) + 1
                pending[-1][1] += 1
            else:
                baseline.count(key, entry)
        surge = key.surge
        surges = self.surges
        if surge is not None:
            surge.add(entry, surges.max_report_ids, track=True)
            ratio = baseline.measure(key, now)[3]
            surge.peak_ratio = max(surge.peak_ratio, ratio)
            if surge.independence.groups > surge.groups_at_emit:
                surges.update(surge, key.ident, now, report.id, events)
        elif len(key.window) >= self._min_count or (
            surges.open_at and len(key.window) * 2 >= self._min_count
        ):
            # The window may still hold expired entries, so its length bounds the count from
            # above: below the minimum no surge can open (nor, below half of it, join an open
            # one), and the baseline need not be computed.
            surges.maybe_open(key, now, report.id, events)
        return events

    def observe_many(self, reports: Iterable[Report]) -> list[IncidentEvent]:
        events: list[IncidentEvent] = []
        for report in reports:
            events.extend(self.observe(report))
        return events

    def due_by(self, ts_ms: int) -> bool:
        """Whether a timer falls due by `ts_ms`: only then must `advance` run before a report
        of that time is observed (observe moves the clock itself)."""
        timers = self.timers.heap
        return bool(timers) and timers[0][0] <= ts_ms

    def advance(self, watermark_ms: int) -> list[IncidentEvent]:
        """Move event time forward (never back), firing checks and updates due by then."""
        if not self.params.enabled:
            return []
        if self.clock_ms is not None and watermark_ms <= self.clock_ms:
            return []
        events: list[IncidentEvent] = []
        self._advance_to(watermark_ms, events)
        return events

    def flush(self) -> list[IncidentEvent]:
        """End of input: throttled updates already decided are emitted at their due time (as the
        Detector does); quiet resolutions are not, the input ended rather than fell quiet."""
        events: list[IncidentEvent] = []
        for due_ms, _, kind, key, incident_id in self.timers.take(UPDATE):
            self.surges.fire(kind, key, incident_id, due_ms, events)
        return events

    def resolve(self, incident_id: str, at_ms: int, reason: str = "dispatcher") -> IncidentEvent:
        """Resolve an open surge from outside (a dispatcher); KeyError if it is not open."""
        key = self.tracker.keys[self.surges.open[incident_id]]
        assert key.surge is not None
        return self.surges.resolve(key.surge, at_ms, reason)

    def is_open(self, incident_id: str) -> bool:
        return incident_id in self.surges.open

    def surge_at(self, category: str, lat: float, lon: float) -> str | None:
        """The id of the open surge of a category whose area holds the point, if any."""
        open_at = self.surges.open_at
        if not open_at:
            return None
        region = _latlng_to_cell(lat, lon, self._region_resolution)
        surge = open_at.get((region, category))
        return surge.incident_id if surge is not None else None

    def region_rate_per_km2_min(
        self,
        category: str,
        lat: float,
        lon: float,
        members: Iterable[tuple[Report, float]],
        now_ms: int,
    ) -> float:
        """The background of a category in the region around a point, per km² per minute, not
        counting `members` (a group being judged): the highest of the region's short-term rate
        (all languages; over the event time seen, at a cold start), its long-term baseline and
        the baseline floor. A significance estimate for local incidents (detectors/chance.py)."""
        region = _latlng_to_cell(lat, lon, self._region_resolution)
        area_km2 = self._region_area.get(region)
        if area_km2 is None:
            area_km2 = self._region_area[region] = h3.cell_area(h3.int_to_str(region), unit="km^2")
        now = self.clock_ms
        baseline = self.baseline
        if not self.params.enabled or now is None or baseline.origin_bucket is None:
            return baseline.floor / area_km2
        tracker = self.tracker
        count = 0
        estimates = 0.0
        cutoff = now - self._window_ms
        for lang in tracker.langs:
            ident = (region, category, lang)
            key = tracker.keys.get(ident)
            if key is not None:
                key_count, _, estimate, _ = baseline.measure(key, now)
                count += key_count
                if estimate is not None:
                    estimates += estimate
            else:
                count += sum(1 for held in tracker.held(ident) if held.ts_ms > cutoff)
        own = sum(1 for member, _ in members if member.ts_ms > cutoff)
        seen_ms = now - baseline.origin_bucket * BUCKET_MS
        span_min = max(BUCKET_MS, min(self._window_ms, seen_ms)) / BUCKET_MS
        short = max(0, count - own) / span_min
        return max(short, estimates, baseline.floor) / area_km2

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict:
        """The durable state: per key its baseline (EWMA), the minute counts not folded into it
        yet (a key folds them only when it is next measured, so they can be older than what a
        restart reads again), open surge and cooldown; timers and clocks. Short windows and
        quiet keys' last reports are not in it: they only hold reports of the last short
        window, which `rebuild` takes again from the input after a restart, so a checkpoint
        stays small however busy the stream."""
        return {
            "keys": {
                ident: (
                    key.ewma,
                    key.ewma_bucket,
                    key.since_ms,
                    key.surge,
                    key.cooldown_until_ms,
                    [(bucket, count) for bucket, count in key.pending],
                )
                for ident, key in self.tracker.keys.items()
            },
            "open": self.surges.open,
            "timers": self.timers.snapshot(),
            "seq": self.timers.seq,
            "clock_ms": self.clock_ms,
            "origin_bucket": self.baseline.origin_bucket,
            "sweep_scheduled": self.tracker.sweep_scheduled,
        }

    def restore(self, snapshot: dict) -> None:
        """Start from a snapshot (a fresh detector with the same params); then `rebuild`."""
        keys = {}
        for ident, saved in snapshot["keys"].items():
            ewma, ewma_bucket, since_ms, surge, cooldown_until_ms, pending = saved
            key = KeyState(ident, ewma_bucket, since_ms)
            key.ewma = ewma
            key.pending.extend([[bucket, count] for bucket, count in pending])
            key.surge = surge
            key.cooldown_until_ms = cooldown_until_ms
            keys[ident] = key
        self.tracker.restore(keys, snapshot["sweep_scheduled"])
        self.surges.restore(snapshot["open"])
        self.timers.restore(snapshot["timers"], snapshot["seq"])
        self.clock_ms = snapshot["clock_ms"]
        self.baseline.origin_bucket = snapshot["origin_bucket"]

    def rebuild(self, reports: Iterable[Report]) -> None:
        """Refill the windows with reports observed before the snapshot, read again from the
        input in (event time, id) order: they go back into the short windows (and quiet keys'
        holds), nothing is judged or emitted, and no minute is counted twice (a tracked key's
        minute counts are in the snapshot)."""
        now = self.clock_ms
        if not self.params.enabled or now is None:
            return
        tracker = self.tracker
        oldest = now - self._window_ms - BUCKET_MS  # the minute being folded, at most
        for report in reports:
            ts_ms = report.ts_ms
            if ts_ms <= oldest or ts_ms > now:
                continue
            key_id = tracker.key_of(report)
            key = tracker.keys.get(key_id)
            if key is None:
                if ts_ms <= now - self._window_ms:
                    # older than any short window: `observe` ignores such a report now (and may
                    # have ignored it then). One held since it came in time is dropped too: it
                    # could still count only towards promoting the key at a late report older
                    # than the clock, the one thing a restart can change here (design.md)
                    continue
                # a sweep is in the snapshot's timers if one was due; scheduling one here
                # could add a timer the uninterrupted run never had
                tracker.hold_or_promote(key_id, report, now, sweep=False)
            elif ts_ms <= key.since_ms:
                continue  # it was left behind when the key was promoted, as before the stop
            elif ts_ms > now - self._window_ms:
                # its minute is counted already: the window only
                key.window.append(entry_of(report))
                key.reporters[report.reporter] = key.reporters.get(report.reporter, 0) + 1

    # ------------------------------------------------------------------ time

    def _advance_to(self, now_ms: int, events: list[IncidentEvent]) -> None:
        pop_due = self.timers.pop_due
        fire = self.surges.fire
        while (timer := pop_due(now_ms)) is not None:
            due_ms, _, kind, key, incident_id = timer
            if self.clock_ms is None or due_ms > self.clock_ms:
                self.clock_ms = due_ms
            if kind == SWEEP:
                self.tracker.sweep(due_ms)
            else:
                fire(kind, key, incident_id, due_ms, events)
        if self.clock_ms is None or now_ms > self.clock_ms:
            self.clock_ms = now_ms
