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

Events use the region's centre as lat/lon (a surge is a claim about a district; its reports are
spread over it), `cells` = [region], `geometry` = the region's polygon, `radius_m` = the region's
circumradius. The `surge` object reports `baseline_per_min` as used in the ratio (so floored):
`ratio == rate_per_min / baseline_per_min` up to rounding.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
from bisect import insort
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import h3
from h3.api.basic_int import grid_disk as _grid_disk
from h3.api.basic_int import latlng_to_cell as _latlng_to_cell

from geoincident.detectors.bounds import bounded, check
from geoincident.detectors.events import KIND_SURGE, OPENED, RESOLVED, UPDATED, IncidentEvent
from geoincident.detectors.independence import Independence
from geoincident.detectors.report import Report
from geoincident.detectors.timefmt import format_ms
from geoincident.geo.cells import cell_of, regions_polygon
from geoincident.geo.distance import haversine_m

BUCKET_MS = 60_000
# Keys are examined for eviction on these event-time boundaries.
SWEEP_MS = 10 * BUCKET_MS
# A key with no open surge, no cooldown, an empty window and a baseline below this fraction of
# the floor is forgotten: recreated later at 0, its ratio is the same (max(b, floor) == floor).
EVICT_FRACTION_OF_FLOOR = 0.1
# Independence of an open surge tracks at most this many member reports; beyond it
# `independent_reporters` stops growing (a lower bound) so one endless surge stays bounded.
MAX_TRACKED_MEMBERS = 20_000
UNDETERMINED_LANG = "und"

STATUS_OPEN = "open"
STATUS_RESOLVED = "resolved"

_CHECK = 0
_UPDATE = 1
_SWEEP = 2
# Keys are tracked in full from their PROMOTE_AFTER-th report within one short window. A key
# never promoted runs below PROMOTE_AFTER / short window (0.6/min by default); a surge needs
# min_count in the window (6/min), a ratio of 10 over such a baseline, above min_ratio (8): so
# whether such a key's baseline were tracked would change no decision (it holds as long as
# PROMOTE_AFTER <= min_count / min_ratio). Bounding the span by the short window keeps all
# window state re-readable from the input after a restart (see `rebuild`).
PROMOTE_AFTER = 3


Key = tuple[int, str, str]  # (H3 region as an integer, category, lang)
# (ts_ms, report id, reporter, device, source): sorts by event time, then id.
_Entry = tuple[int, str, str, str | None, str | None]


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
            # Keys below PROMOTE_AFTER reports per short window are not tracked (see there):
            # that changes no decision only while such a key could never reach min_ratio.
            raise ValueError(
                f"surge.min_count must be at least {PROMOTE_AFTER} x surge.min_ratio "
                f"({PROMOTE_AFTER * self.min_ratio:g}), not {self.min_count!r}: below that, "
                "quiet districts that are not tracked could surge unseen"
            )

    @property
    def window_ms(self) -> int:
        return int(self.short_window_s * 1000)


@functools.lru_cache(maxsize=4096)
def language_of(lang: str | None) -> str:
    """The primary language subtag, lower-case ("en-US" -> "en"); "und" when absent or bogus."""
    if not lang:
        return UNDETERMINED_LANG
    primary = lang.strip().replace("_", "-").split("-", 1)[0].lower()
    if not 1 <= len(primary) <= 8 or not (primary.isascii() and primary.isalpha()):
        return UNDETERMINED_LANG
    return primary


def surge_id_for(region: str, category: str, lang: str, bucket_start_ms: int) -> str:
    digest = hashlib.blake2b(
        f"{region}|{category}|{lang}|{bucket_start_ms}".encode(), digest_size=8
    ).hexdigest()
    return f"srg-{digest}"


def surge_confidence(peak_ratio: float, independent: int, params: SurgeParams) -> float:
    """As sure as the weaker of the two kinds of evidence: how far the rate rose above its
    threshold ratio, and how many independent voices there are. 0.75 with both at their
    threshold (as a local incident at its threshold), 0.94 at twice both, approaching 1."""
    margin = min(peak_ratio / params.min_ratio, independent / params.min_independent)
    return round(1.0 - 2.0 ** (-2.0 * margin), 3)


class _Surge:
    """One open surge of a key."""

    __slots__ = (
        "incident_id",
        "validated_ms",
        "first_ms",
        "last_ms",
        "version",
        "report_count",
        "report_ids",
        "report_ids_truncated",
        "sources",
        "independence",
        "tracked",
        "last_emit_ms",
        "groups_at_emit",
        "update_due",
        "calm_since_ms",
        "peak_ratio",
        "status",
        "resolved_reason",
        "lat",
        "lon",
        "h3_cell",
        "radius_m",
        "keys",
    )

    def __init__(self, incident_id: str, validated_ms: int, independence: Independence) -> None:
        self.incident_id = incident_id
        self.validated_ms = validated_ms
        self.first_ms = validated_ms
        self.last_ms = validated_ms
        self.version = 0
        self.report_count = 0
        self.report_ids: list[str] = []
        self.report_ids_truncated = False
        self.sources: dict[str, int] = {}
        self.independence = independence
        self.tracked = 0
        self.last_emit_ms = validated_ms
        self.groups_at_emit = 0
        self.update_due = False
        self.calm_since_ms: int | None = None
        self.peak_ratio = 0.0
        self.status = STATUS_OPEN
        self.resolved_reason: str | None = None
        self.lat = 0.0
        self.lon = 0.0
        self.h3_cell = ""
        self.radius_m = 0.0
        # The keys surging together as this one outbreak: the first opened it, adjacent regions
        # (any language) surging in the same category joined it.
        self.keys: list[Key] = []

    def add(self, entry: _Entry, max_report_ids: int, track: bool) -> None:
        ts_ms, report_id, reporter, device, source = entry
        self.report_count += 1
        if ts_ms < self.first_ms:
            self.first_ms = ts_ms
        if ts_ms > self.last_ms:
            self.last_ms = ts_ms
        if len(self.report_ids) < max_report_ids:
            self.report_ids.append(report_id)
        else:
            self.report_ids_truncated = True
        name = source or "unknown"
        self.sources[name] = self.sources.get(name, 0) + 1
        if track and self.tracked < MAX_TRACKED_MEMBERS:
            self.independence.add(reporter, device, 1.0)
            self.tracked += 1


class _KeyState:
    """Counts of one (region, category, lang): the short window, unfolded buckets, the EWMA."""

    __slots__ = (
        "ident",
        "region",
        "category",
        "lang",
        "window",
        "reporters",
        "pending",
        "ewma",
        "ewma_bucket",
        "surge",
        "cooldown_until_ms",
        "since_ms",
    )

    def __init__(self, ident: Key, ewma_bucket: int, since_ms: int) -> None:
        self.ident = ident
        # reports at or before this were not counted (held no more when the key was promoted)
        self.since_ms = since_ms
        self.region: str = h3.int_to_str(ident[0])
        self.category = ident[1]
        self.lang = ident[2]
        self.window: deque[_Entry] = deque()
        self.reporters: dict[str, int] = {}  # reporter -> reports in the window
        self.pending: deque[list[int]] = deque()  # [bucket, count], buckets not yet folded
        self.ewma = 0.0  # per-minute rate after folding bucket `ewma_bucket`
        self.ewma_bucket = ewma_bucket
        self.surge: _Surge | None = None
        self.cooldown_until_ms: int | None = None


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
    ) -> None:
        self.params = params = params or SurgeParams()
        self.cell_resolution = cell_resolution
        self.max_report_ids = max_report_ids
        self.clock_ms: int | None = None
        self.origin_bucket: int | None = None
        self._keys: dict[Key, _KeyState] = {}
        self._sparse: dict[Key, list[_Entry]] = {}
        self._open: dict[str, Key] = {}
        # (region, category) -> the open surge covering it; languages seen (keys are per language)
        self._open_at: dict[tuple[int, str], _Surge] = {}
        # sorted, so sums over languages add up in the same order in every process
        self._langs: tuple[str, ...] = ()
        self._region_area: dict[int, float] = {}
        self._timers: list[tuple[int, int, int, Key | None, str | None]] = []
        self._seq = 0
        self._sweep_scheduled = False
        self._window_ms = params.window_ms
        self._region_resolution = params.region_resolution
        self._window_min = params.window_ms / BUCKET_MS
        self._min_count = params.min_count
        self._decay = 0.5 ** (BUCKET_MS / (params.baseline_half_life_s * 1000.0))
        self._floor = params.baseline_floor_per_min
        self._calm_factor = params.min_ratio / 2.0
        self._evict_below = params.baseline_floor_per_min * EVICT_FRACTION_OF_FLOOR
        self._update_ms = int(params.update_interval_s * 1000)
        self._resolve_ms = int(params.resolve_after_s * 1000)
        self._cooldown_ms = int(params.cooldown_s * 1000)
        self._warmup_ms = int(params.warmup_s * 1000)

    # ------------------------------------------------------------------ public surface

    @property
    def state_keys(self) -> int:
        """(region, category, lang) keys held."""
        return len(self._keys)

    @property
    def state_reports(self) -> int:
        """Reports held in short windows."""
        held = sum(len(entries) for entries in self._sparse.values())
        return held + sum(len(key.window) for key in self._keys.values())

    @property
    def open_surges(self) -> int:
        return len(self._open)

    def observe(self, report: Report) -> list[IncidentEvent]:
        """Count one report; returns the events of timers due up to its event time, then its own."""
        if not self.params.enabled:
            return []
        ts_ms = report.ts_ms
        events: list[IncidentEvent] = []
        if self.clock_ms is None or ts_ms > self.clock_ms:
            timers = self._timers
            if timers and timers[0][0] <= ts_ms:
                self._advance_to(ts_ms, events)
            else:
                self.clock_ms = ts_ms
        now = self.clock_ms
        assert now is not None
        if ts_ms <= now - self._window_ms:
            return events  # too old for any short window; a baseline is not worth a rewrite
        bucket = ts_ms // BUCKET_MS
        if self.origin_bucket is None or bucket < self.origin_bucket:
            self.origin_bucket = bucket
        entry, key_id = self._entry_and_key(report)
        key = self._keys.get(key_id)
        if key is None:
            key = self._hold_or_promote(key_id, entry, sweep=True)
            if key is None:
                return events
        else:
            # _count, inlined for the common case: in order, in the newest minute
            window = key.window
            pending = key.pending
            if window and entry >= window[-1] and pending and pending[-1][0] == bucket:
                window.append(entry)
                reporter = entry[2]
                reporters = key.reporters
                reporters[reporter] = reporters.get(reporter, 0) + 1
                pending[-1][1] += 1
            else:
                self._count(key, entry)
        surge = key.surge
        if surge is not None:
            surge.add(entry, self.max_report_ids, track=True)
            ratio = self._measure(key, now)[3]
            surge.peak_ratio = max(surge.peak_ratio, ratio)
            if surge.independence.groups > surge.groups_at_emit:
                self._update(surge, key.ident, now, report.id, events)
        elif len(key.window) >= self._min_count or (
            self._open_at and len(key.window) * 2 >= self._min_count
        ):
            # The window may still hold expired entries, so its length bounds the count from
            # above: below the minimum no surge can open (nor, below half of it, join an open
            # one), and the baseline need not be computed.
            self._maybe_open(key, now, report.id, events)
        return events

    def observe_many(self, reports: Iterable[Report]) -> list[IncidentEvent]:
        events: list[IncidentEvent] = []
        for report in reports:
            events.extend(self.observe(report))
        return events

    def due_by(self, ts_ms: int) -> bool:
        """Whether a timer falls due by `ts_ms`: only then must `advance` run before a report
        of that time is observed (observe moves the clock itself)."""
        timers = self._timers
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
        for due_ms, _, kind, key, incident_id in sorted(self._timers):
            if kind == _UPDATE:
                self._fire(kind, key, incident_id, due_ms, events)
        self._timers = [timer for timer in self._timers if timer[2] != _UPDATE]
        heapq.heapify(self._timers)
        return events

    def resolve(self, incident_id: str, at_ms: int, reason: str = "dispatcher") -> IncidentEvent:
        """Resolve an open surge from outside (a dispatcher); KeyError if it is not open."""
        key = self._keys[self._open[incident_id]]
        assert key.surge is not None
        return self._resolve(key.surge, at_ms, reason)

    def is_open(self, incident_id: str) -> bool:
        return incident_id in self._open

    def surge_at(self, category: str, lat: float, lon: float) -> str | None:
        """The id of the open surge of a category whose area holds the point, if any."""
        if not self._open_at:
            return None
        region = _latlng_to_cell(lat, lon, self._region_resolution)
        surge = self._open_at.get((region, category))
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
        the baseline floor. A significance estimate for local incidents (engine)."""
        region = _latlng_to_cell(lat, lon, self._region_resolution)
        area_km2 = self._region_area.get(region)
        if area_km2 is None:
            area_km2 = self._region_area[region] = h3.cell_area(h3.int_to_str(region), unit="km^2")
        now = self.clock_ms
        if not self.params.enabled or now is None or self.origin_bucket is None:
            return self._floor / area_km2
        count = 0
        baseline = 0.0
        cutoff = now - self._window_ms
        for lang in self._langs:
            ident = (region, category, lang)
            key = self._keys.get(ident)
            if key is not None:
                key_count, _, estimate, _ = self._measure(key, now)
                count += key_count
                if estimate is not None:
                    baseline += estimate
            else:
                held = self._sparse.get(ident)
                if held:
                    count += sum(1 for entry in held if entry[0] > cutoff)
        own = sum(1 for member, _ in members if member.ts_ms > cutoff)
        seen_ms = now - self.origin_bucket * BUCKET_MS
        span_min = max(BUCKET_MS, min(self._window_ms, seen_ms)) / BUCKET_MS
        short = max(0, count - own) / span_min
        return max(short, baseline, self._floor) / area_km2

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
                for ident, key in self._keys.items()
            },
            "open": self._open,
            "timers": list(self._timers),
            "seq": self._seq,
            "clock_ms": self.clock_ms,
            "origin_bucket": self.origin_bucket,
            "sweep_scheduled": self._sweep_scheduled,
        }

    def restore(self, snapshot: dict) -> None:
        """Start from a snapshot (a fresh detector with the same params); then `rebuild`."""
        keys = {}
        for ident, saved in snapshot["keys"].items():
            ewma, ewma_bucket, since_ms, surge, cooldown_until_ms, pending = saved
            key = _KeyState(ident, ewma_bucket, since_ms)
            key.ewma = ewma
            key.pending.extend([bucket, count] for bucket, count in pending)
            key.surge = surge
            key.cooldown_until_ms = cooldown_until_ms
            keys[ident] = key
        self._keys = keys
        self._open = snapshot["open"]
        self._timers = list(snapshot["timers"])
        heapq.heapify(self._timers)
        self._seq = snapshot["seq"]
        self.clock_ms = snapshot["clock_ms"]
        self.origin_bucket = snapshot["origin_bucket"]
        self._sweep_scheduled = snapshot["sweep_scheduled"]
        self._sparse = {}
        self._langs = tuple(sorted({ident[2] for ident in keys}))
        self._open_at = {}
        for ident in self._open.values():
            surge = keys[ident].surge
            assert surge is not None
            for member in surge.keys:
                self._open_at[(member[0], member[1])] = surge

    def rebuild(self, reports: Iterable[Report]) -> None:
        """Refill the windows with reports observed before the snapshot, read again from the
        input in (event time, id) order: they go back into the short windows (and quiet keys'
        holds), nothing is judged or emitted, and no minute is counted twice (a tracked key's
        minute counts are in the snapshot)."""
        now = self.clock_ms
        if not self.params.enabled or now is None:
            return
        oldest = now - self._window_ms - BUCKET_MS  # the minute being folded, at most
        for report in reports:
            ts_ms = report.ts_ms
            if ts_ms <= oldest or ts_ms > now:
                continue
            entry, key_id = self._entry_and_key(report)
            key = self._keys.get(key_id)
            if key is None:
                # a sweep is in the snapshot's timers if one was due; scheduling one here
                # could add a timer the uninterrupted run never had
                self._hold_or_promote(key_id, entry, sweep=False)
            elif ts_ms <= key.since_ms:
                continue  # it was left behind when the key was promoted, as before the stop
            elif ts_ms > now - self._window_ms:
                key.window.append(entry)  # its minute is counted already: the window only
                key.reporters[entry[2]] = key.reporters.get(entry[2], 0) + 1

    # ------------------------------------------------------------------ time

    def _advance_to(self, now_ms: int, events: list[IncidentEvent]) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            due_ms, _, kind, key, incident_id = heapq.heappop(timers)
            if self.clock_ms is None or due_ms > self.clock_ms:
                self.clock_ms = due_ms
            self._fire(kind, key, incident_id, due_ms, events)
        if self.clock_ms is None or now_ms > self.clock_ms:
            self.clock_ms = now_ms

    def _timer(self, due_ms: int, kind: int, key: Key | None, incident_id: str | None) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (due_ms, self._seq, kind, key, incident_id))

    def _fire(
        self,
        kind: int,
        key_id: Key | None,
        incident_id: str | None,
        due_ms: int,
        events: list[IncidentEvent],
    ) -> None:
        if kind == _SWEEP:
            self._sweep(due_ms)
            return
        key = self._keys.get(key_id) if key_id is not None else None
        surge = key.surge if key is not None else None
        if key is None or surge is None or surge.incident_id != incident_id:
            return
        if kind == _UPDATE:
            if surge.update_due:
                events.append(self._emit(surge, UPDATED, due_ms, None))
            return
        # _CHECK, on a minute boundary: calm when every region of the surge is calm
        params = self.params
        calm = True
        for ident in surge.keys:
            count, _, _, ratio = self._measure(self._keys[ident], due_ms)
            surge.peak_ratio = max(surge.peak_ratio, ratio)
            if not (ratio * 2 < params.min_ratio or count * 2 < params.min_count):
                calm = False
        if calm:
            if surge.calm_since_ms is None:
                surge.calm_since_ms = due_ms
            if due_ms - surge.calm_since_ms >= self._resolve_ms:
                events.append(self._resolve(surge, due_ms, "quiet"))
                return
        else:
            surge.calm_since_ms = None
        self._timer(due_ms + BUCKET_MS, _CHECK, key_id, incident_id)

    def _sweep(self, now_ms: int) -> None:
        """Forget keys that can no longer matter; runs every SWEEP_MS of event time."""
        doomed = []
        for key_id, key in self._keys.items():
            if key.surge is not None:
                continue
            if key.cooldown_until_ms is not None and key.cooldown_until_ms > now_ms:
                continue
            _, _, estimate, _ = self._measure(key, now_ms)
            if key.window or key.pending or estimate is None:
                continue
            if estimate < self._evict_below:
                doomed.append(key_id)
        for key_id in doomed:
            del self._keys[key_id]
        horizon = now_ms - self._window_ms
        self._sparse = {k: v for k, v in self._sparse.items() if v[-1][0] > horizon}
        if self._keys or self._sparse:
            self._timer(now_ms + SWEEP_MS, _SWEEP, None, None)
        else:
            self._sweep_scheduled = False

    # ------------------------------------------------------------------ counting

    def _entry_and_key(self, report: Report) -> tuple[_Entry, Key]:
        """What a key's window holds of a report, and the key: (region, category, language)."""
        entry: _Entry = (report.ts_ms, report.id, report.reporter, report.device, report.source)
        key_id = (
            _latlng_to_cell(report.lat, report.lon, self._region_resolution),
            report.category,
            language_of(report.lang),
        )
        return entry, key_id

    def _hold_or_promote(self, key_id: Key, entry: _Entry, sweep: bool) -> _KeyState | None:
        """A report of a key not tracked yet. A (region, category, language) reporting under
        PROMOTE_AFTER per short window cannot change a decision (see PROMOTE_AFTER): it is only
        remembered as its last few reports, which join the key's window (returned) once it
        gets busier."""
        ts_ms = entry[0]
        if key_id[2] not in self._langs:
            self._langs = tuple(sorted({*self._langs, key_id[2]}))
        held = [e for e in self._sparse.get(key_id, ()) if e[0] > ts_ms - self._window_ms]
        held.append(entry)
        if len(held) < PROMOTE_AFTER:
            self._sparse[key_id] = held
            if sweep:
                self._schedule_sweep()
            return None
        self._sparse.pop(key_id, None)
        key = self._key_for(key_id, ts_ms)
        for held_entry in sorted(held):
            self._count(key, held_entry)
        return key

    def _key_for(self, key_id: Key, promoted_ms: int) -> _KeyState:
        key = self._keys.get(key_id)
        if key is None:
            assert self.origin_bucket is not None
            # A new key has (implicitly) folded empty minutes since the detector's origin; it
            # counts the reports held for the last short window before its promotion.
            key = self._keys[key_id] = _KeyState(
                key_id, self.origin_bucket - 1, promoted_ms - self._window_ms
            )
            self._schedule_sweep()
        return key

    def _schedule_sweep(self) -> None:
        if not self._sweep_scheduled:
            self._sweep_scheduled = True
            now = self.clock_ms or 0
            self._timer((now // SWEEP_MS + 1) * SWEEP_MS, _SWEEP, None, None)

    def _count(self, key: _KeyState, entry: _Entry) -> None:
        window = key.window
        if not window or entry >= window[-1]:
            window.append(entry)
        else:  # a late report: keep the window in (ts, id) order
            insort(window, entry)
        reporter = entry[2]
        key.reporters[reporter] = key.reporters.get(reporter, 0) + 1
        bucket = entry[0] // BUCKET_MS
        pending = key.pending
        if pending and pending[-1][0] == bucket:
            pending[-1][1] += 1
        elif not pending or pending[-1][0] < bucket:
            pending.append([bucket, 1])
        else:
            for position, slot in enumerate(pending):
                if slot[0] == bucket:
                    slot[1] += 1
                    break
                if slot[0] > bucket:
                    pending.insert(position, [bucket, 1])
                    break

    def _measure(self, key: _KeyState, now_ms: int) -> tuple[int, float, float | None, float]:
        """(count, rate/min, baseline estimate/min or None, ratio) as of now_ms; the ratio
        divides by the estimate floored at `baseline_floor_per_min`."""
        cutoff = now_ms - self._window_ms
        window = key.window
        reporters = key.reporters
        while window and window[0][0] <= cutoff:
            reporter = window.popleft()[2]
            left = reporters[reporter] - 1
            if left:
                reporters[reporter] = left
            else:
                del reporters[reporter]
        count = len(window)
        rate = count / self._window_min
        estimate = self._baseline(key, now_ms)
        return count, rate, estimate, rate / self._used(estimate)

    def _used(self, estimate: float | None) -> float:
        if estimate is None or estimate < self._floor:
            return self._floor
        return estimate

    def _baseline(self, key: _KeyState, now_ms: int) -> float | None:
        """Bias-corrected EWMA over the buckets wholly before the short window; None before the
        first such bucket exists. While the key's surge is open a bucket teaches the baseline at
        most `min_ratio / 2` x the baseline (the calm level): a surge does not explain itself
        away within the hour, yet a lasting new level is learned, over hours."""
        last = (now_ms - self._window_ms) // BUCKET_MS - 1
        decay = self._decay
        pending = key.pending
        origin = self.origin_bucket
        assert origin is not None
        while pending and pending[0][0] <= last:
            bucket, count = pending.popleft()
            carried = key.ewma * decay ** max(0, bucket - 1 - key.ewma_bucket)
            learned = float(count)
            if key.surge is not None:
                seen = bucket - origin
                estimate = carried / (1.0 - decay**seen) if seen > 0 else None
                learned = min(learned, self._calm_factor * self._used(estimate))
            key.ewma = carried * decay + (1.0 - decay) * learned
            key.ewma_bucket = bucket
        seen = last - origin + 1
        if seen <= 0:
            return None
        raw = key.ewma * decay ** (last - key.ewma_bucket) if last > key.ewma_bucket else key.ewma
        return raw / (1.0 - decay**seen)

    # ------------------------------------------------------------------ decisions

    def _maybe_open(
        self, key: _KeyState, now_ms: int, trigger: str, events: list[IncidentEvent]
    ) -> None:
        params = self.params
        # The cheap refusals first; measuring folds buckets and trims the window, which any
        # later measurement does the same way (the baseline is computed in closed form).
        if key.cooldown_until_ms is not None:
            if now_ms < key.cooldown_until_ms:
                return
            key.cooldown_until_ms = None
        assert self.origin_bucket is not None
        if now_ms - self.origin_bucket * BUCKET_MS < self._warmup_ms:
            return
        count, _, estimate, ratio = self._measure(key, now_ms)
        if estimate is None:
            return
        # One outbreak, one surge: a region next to an open surge of the category joins it at
        # the levels that keep a surge open (half the thresholds, the hysteresis of `_fire`).
        adjacent = self._adjacent_surge(key) if self._open_at else None
        if adjacent is not None:
            if count * 2 < params.min_count or ratio * 2 < params.min_ratio:
                return
            needed = (params.min_independent + 1) // 2
        else:
            if count < params.min_count or ratio < params.min_ratio:
                return
            needed = params.min_independent
        if len(key.reporters) < needed:  # cheap upper bound first
            return
        independence = Independence()
        for _, _, reporter, device, _ in key.window:
            independence.add(reporter, device, 1.0)
        if independence.groups < needed:
            return
        if adjacent is not None:
            self._join(key, adjacent, now_ms, trigger, events)
            return
        region = key.region
        incident_id = surge_id_for(region, key.category, key.lang, now_ms // BUCKET_MS * BUCKET_MS)
        surge = _Surge(incident_id, now_ms, independence)
        for entry in key.window:
            surge.add(entry, self.max_report_ids, track=False)
        surge.tracked = len(key.window)
        surge.first_ms = key.window[0][0]
        surge.last_ms = key.window[-1][0]  # the window is in event-time order
        surge.peak_ratio = ratio
        surge.keys = [key.ident]
        self._place(surge)
        key.surge = surge
        self._open[incident_id] = key.ident
        self._open_at[(key.ident[0], key.category)] = surge
        events.append(self._emit(surge, OPENED, now_ms, trigger))
        next_minute = (now_ms // BUCKET_MS + 1) * BUCKET_MS
        self._timer(next_minute, _CHECK, key.ident, incident_id)

    def _adjacent_surge(self, key: _KeyState) -> _Surge | None:
        """The oldest open surge of the key's category in its region or a neighbouring one."""
        category = key.category
        found: _Surge | None = None
        for region in _grid_disk(key.ident[0], 1):
            surge = self._open_at.get((region, category))
            if surge is not None and (
                found is None
                or (surge.validated_ms, surge.incident_id) < (found.validated_ms, found.incident_id)
            ):
                found = surge
        return found

    def _join(
        self, key: _KeyState, surge: _Surge, now_ms: int, trigger: str, events: list[IncidentEvent]
    ) -> None:
        """A key becomes part of an open surge: its window counts, its region joins the area."""
        key.surge = surge
        surge.keys.append(key.ident)
        self._open_at[(key.ident[0], key.category)] = surge
        for entry in key.window:
            surge.add(entry, self.max_report_ids, track=True)
        self._place(surge)
        self._update(surge, surge.keys[0], now_ms, trigger, events)

    def _update(
        self, surge: _Surge, ident: Key, now_ms: int, trigger: str, events: list[IncidentEvent]
    ) -> None:
        """An `updated` now, or once `update_interval_s` has passed since the last event (a
        timer filed under the key `ident`)."""
        due_ms = surge.last_emit_ms + self._update_ms
        if now_ms >= due_ms:
            events.append(self._emit(surge, UPDATED, now_ms, trigger))
        elif not surge.update_due:
            surge.update_due = True
            self._timer(due_ms, _UPDATE, ident, surge.incident_id)

    def _place(self, surge: _Surge) -> None:
        """Centre, cell and radius of a surge's area (its regions' centres' mean)."""
        regions = _regions(surge)
        centres = [h3.cell_to_latlng(region) for region in regions]
        centre_lat = sum(lat for lat, _ in centres) / len(centres)
        centre_lon = sum(lon for _, lon in centres) / len(centres)
        surge.lat = round(centre_lat, 7)
        surge.lon = round(centre_lon, 7)
        surge.h3_cell = cell_of(surge.lat, surge.lon, self.cell_resolution)
        radius_m = max(
            haversine_m(surge.lat, surge.lon, v_lat, v_lon)
            for region in regions
            for v_lat, v_lon in h3.cell_to_boundary(region)
        )
        surge.radius_m = round(math.ceil(radius_m * 10.0) / 10.0, 1)

    def _resolve(self, surge: _Surge, at_ms: int, reason: str) -> IncidentEvent:
        surge.status = STATUS_RESOLVED
        surge.resolved_reason = reason
        event = self._emit(surge, RESOLVED, at_ms, None)
        for ident in surge.keys:
            member = self._keys[ident]
            member.surge = None
            member.cooldown_until_ms = at_ms + self._cooldown_ms
            if self._open_at.get((ident[0], ident[1])) is surge:
                del self._open_at[(ident[0], ident[1])]
        del self._open[surge.incident_id]
        return event

    def _emit(self, surge: _Surge, name: str, now_ms: int, trigger: str | None) -> IncidentEvent:
        key = self._keys[surge.keys[0]]  # the region that opened it names the surge
        rate = 0.0
        baseline = 0.0
        for ident in surge.keys:
            _, key_rate, estimate, _ = self._measure(self._keys[ident], now_ms)
            rate += key_rate
            baseline += self._used(estimate)
        ratio = rate / baseline
        regions = _regions(surge)
        surge.version += 1
        surge.last_emit_ms = max(surge.last_emit_ms, now_ms)
        groups = surge.independence.groups
        surge.groups_at_emit = groups
        surge.update_due = False
        return IncidentEvent(
            incident_id=surge.incident_id,
            event=name,
            version=surge.version,
            kind=KIND_SURGE,
            category=key.category,
            lat=surge.lat,
            lon=surge.lon,
            h3_cell=surge.h3_cell,
            cells=tuple(regions),
            geometry=regions_polygon(regions),
            radius_m=surge.radius_m,
            first_report_at=format_ms(surge.first_ms),
            validated_at=format_ms(surge.validated_ms),
            last_report_at=format_ms(surge.last_ms),
            emitted_at=format_ms(now_ms),
            report_count=surge.report_count,
            independent_reporters=groups,
            score=round(ratio, 3),
            confidence=surge_confidence(surge.peak_ratio, groups, self.params),
            report_ids=tuple(surge.report_ids),
            report_ids_truncated=surge.report_ids_truncated,
            sources=dict(sorted(surge.sources.items())),
            jurisdiction=None,
            status=surge.status,
            resolved_reason=surge.resolved_reason,
            surge={
                "region": key.region,
                "regions": regions,
                "rate_per_min": round(rate, 3),
                "baseline_per_min": round(baseline, 3),
                "ratio": round(ratio, 3),
                "window_s": round(self.params.short_window_s),
                "lang": key.lang,
            },
            trigger_report_id=trigger,
        )


def _regions(surge: _Surge) -> list[str]:
    """The H3 regions of a surge's keys, sorted (several languages may share one)."""
    return sorted({h3.int_to_str(ident[0]) for ident in surge.keys})
