"""Surge decisions: open, join, update (throttled), the minute check and resolve; the events.

The thresholds and their halves (hysteresis) are described in surge.py's docstring.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import h3
from h3.api.basic_int import grid_disk as _grid_disk

from geoincident.detectors.events import KIND_SURGE, OPENED, RESOLVED, UPDATED, IncidentEvent
from geoincident.detectors.independence import Independence
from geoincident.detectors.surge_baseline import BUCKET_MS, Baseline, Entry, Key, KeyState
from geoincident.detectors.timefmt import format_ms
from geoincident.detectors.timers import Timers
from geoincident.geo.cells import cell_of, regions_polygon
from geoincident.geo.distance import haversine_m
from geoincident.geo.regions import region_of_cell

if TYPE_CHECKING:
    from geoincident.detectors.surge import SurgeParams

# Timer kinds (in checkpoints): a surge's minute check and its throttled update; the sweep's
# is surge_keys.SWEEP.
CHECK = 0
UPDATE = 1
# Independence of an open surge tracks at most this many member reports; beyond it
# `independent_reporters` stops growing (a lower bound) so one endless surge stays bounded.
MAX_TRACKED_MEMBERS = 20_000

STATUS_OPEN = "open"
STATUS_RESOLVED = "resolved"


def surge_id_for(
    region: str, category: str, lang: str, bucket_start_ms: int, shard: str | None = None
) -> str:
    """`srg-` + a hash of the opening key and minute; with scale-out `srg-<shard>-<hash>`, the
    routing region that owns the surge (lifecycle.incident_id_for)."""
    digest = hashlib.blake2b(
        f"{region}|{category}|{lang}|{bucket_start_ms}".encode(), digest_size=8
    ).hexdigest()
    return f"srg-{digest}" if shard is None else f"srg-{shard}-{digest}"


def surge_confidence(peak_ratio: float, independent: int, params: SurgeParams) -> float:
    """As sure as the weaker of the two kinds of evidence: how far the rate rose above its
    threshold ratio, and how many independent voices there are. 0.75 with both at their
    threshold (as a local incident at its threshold), 0.94 at twice both, approaching 1."""
    margin = min(peak_ratio / params.min_ratio, independent / params.min_independent)
    return round(1.0 - 2.0 ** (-2.0 * margin), 3)


class _Surge:
    """One surge: opened by a key, joined by the adjacent ones surging with it."""

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

    def add(self, entry: Entry, max_report_ids: int, track: bool) -> None:
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


class Surges:
    """The open surges, and every decision about them."""

    def __init__(
        self,
        params: SurgeParams,
        baseline: Baseline,
        keys: dict[Key, KeyState],
        timers: Timers,
        *,
        cell_resolution: int,
        max_report_ids: int,
        shard_resolution: int | None = None,
    ) -> None:
        self.params = params
        self.shard_resolution = shard_resolution
        self.baseline = baseline
        self.keys = keys  # the tracked keys (surge_keys.KeyTracker.keys)
        self.timers = timers
        self.cell_resolution = cell_resolution
        self.max_report_ids = max_report_ids
        # open surge id -> the key that opened it
        self.open: dict[str, Key] = {}
        # (region, category) -> the open surge covering it; languages seen (keys are per language)
        self.open_at: dict[tuple[int, str], _Surge] = {}
        self._update_ms = int(params.update_interval_s * 1000)
        self._resolve_ms = int(params.resolve_after_s * 1000)
        self._cooldown_ms = int(params.cooldown_s * 1000)
        self._warmup_ms = int(params.warmup_s * 1000)

    def maybe_open(
        self, key: KeyState, now_ms: int, trigger: str, events: list[IncidentEvent]
    ) -> None:
        """Open a surge of the key, or join it to an adjacent one, if it surges."""
        params = self.params
        # The cheap refusals first; measuring folds buckets and trims the window, which any
        # later measurement does the same way (the baseline is computed in closed form).
        if key.cooldown_until_ms is not None:
            if now_ms < key.cooldown_until_ms:
                return
            key.cooldown_until_ms = None
        origin = self.baseline.origin_bucket
        assert origin is not None
        if now_ms - origin * BUCKET_MS < self._warmup_ms:
            return
        count, _, estimate, ratio = self.baseline.measure(key, now_ms)
        if estimate is None:
            return
        # One outbreak, one surge: a region next to an open surge of the category joins it at
        # the levels that keep a surge open (half the thresholds, the hysteresis of the minute
        # check in `fire`).
        adjacent = self._adjacent(key) if self.open_at else None
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
        incident_id = surge_id_for(
            region,
            key.category,
            key.lang,
            now_ms // BUCKET_MS * BUCKET_MS,
            None
            if self.shard_resolution is None
            else region_of_cell(region, self.shard_resolution),
        )
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
        self.open[incident_id] = key.ident
        self.open_at[(key.ident[0], key.category)] = surge
        events.append(self.emit(surge, OPENED, now_ms, trigger))
        next_minute = (now_ms // BUCKET_MS + 1) * BUCKET_MS
        self.timers.add(next_minute, CHECK, key.ident, incident_id)

    def _adjacent(self, key: KeyState) -> _Surge | None:
        """The oldest open surge of the key's category in its region or a neighbouring one."""
        category = key.category
        found: _Surge | None = None
        for region in _grid_disk(key.ident[0], 1):
            surge = self.open_at.get((region, category))
            if surge is not None and (
                found is None
                or (surge.validated_ms, surge.incident_id) < (found.validated_ms, found.incident_id)
            ):
                found = surge
        return found

    def _join(
        self, key: KeyState, surge: _Surge, now_ms: int, trigger: str, events: list[IncidentEvent]
    ) -> None:
        """A key becomes part of an open surge: its window counts, its region joins the area."""
        key.surge = surge
        surge.keys.append(key.ident)
        self.open_at[(key.ident[0], key.category)] = surge
        for entry in key.window:
            surge.add(entry, self.max_report_ids, track=True)
        self._place(surge)
        self.update(surge, surge.keys[0], now_ms, trigger, events)

    def update(
        self, surge: _Surge, ident: Key, now_ms: int, trigger: str, events: list[IncidentEvent]
    ) -> None:
        """An `updated` now, or once `update_interval_s` has passed since the last event (a
        timer filed under the key `ident`)."""
        due_ms = surge.last_emit_ms + self._update_ms
        if now_ms >= due_ms:
            events.append(self.emit(surge, UPDATED, now_ms, trigger))
        elif not surge.update_due:
            surge.update_due = True
            self.timers.add(due_ms, UPDATE, ident, surge.incident_id)

    def fire(
        self, kind: int, key_id: Key, incident_id: str, due_ms: int, events: list[IncidentEvent]
    ) -> None:
        """A CHECK or UPDATE timer of a surge, if it is still open."""
        key = self.keys.get(key_id)
        surge = key.surge if key is not None else None
        if surge is None or surge.incident_id != incident_id:
            return
        if kind == UPDATE:
            if surge.update_due:
                events.append(self.emit(surge, UPDATED, due_ms, None))
            return
        # CHECK, on a minute boundary: calm when every region of the surge is calm
        params = self.params
        measure = self.baseline.measure
        calm = True
        for ident in surge.keys:
            count, _, _, ratio = measure(self.keys[ident], due_ms)
            surge.peak_ratio = max(surge.peak_ratio, ratio)
            if not (ratio * 2 < params.min_ratio or count * 2 < params.min_count):
                calm = False
        if calm:
            if surge.calm_since_ms is None:
                surge.calm_since_ms = due_ms
            if due_ms - surge.calm_since_ms >= self._resolve_ms:
                events.append(self.resolve(surge, due_ms, "quiet"))
                return
        else:
            surge.calm_since_ms = None
        self.timers.add(due_ms + BUCKET_MS, CHECK, key_id, incident_id)

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

    def resolve(self, surge: _Surge, at_ms: int, reason: str) -> IncidentEvent:
        surge.status = STATUS_RESOLVED
        surge.resolved_reason = reason
        event = self.emit(surge, RESOLVED, at_ms, None)
        for ident in surge.keys:
            member = self.keys[ident]
            member.surge = None
            member.cooldown_until_ms = at_ms + self._cooldown_ms
            if self.open_at.get((ident[0], ident[1])) is surge:
                del self.open_at[(ident[0], ident[1])]
        del self.open[surge.incident_id]
        return event

    def emit(self, surge: _Surge, name: str, now_ms: int, trigger: str | None) -> IncidentEvent:
        key = self.keys[surge.keys[0]]  # the region that opened it names the surge
        measure = self.baseline.measure
        used = self.baseline.used
        rate = 0.0
        baseline = 0.0
        for ident in surge.keys:
            _, key_rate, estimate, _ = measure(self.keys[ident], now_ms)
            rate += key_rate
            baseline += used(estimate)
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

    def restore(self, open_surges: dict[str, Key]) -> None:
        """The open surges of a checkpoint, found on their keys (restored first)."""
        self.open.clear()
        self.open.update(open_surges)
        self.open_at.clear()
        for ident in self.open.values():
            surge = self.keys[ident].surge
            assert surge is not None
            for member in surge.keys:
                self.open_at[(member[0], member[1])] = surge


def _regions(surge: _Surge) -> list[str]:
    """The H3 regions of a surge's keys, sorted (several languages may share one)."""
    return sorted({h3.int_to_str(ident[0]) for ident in surge.keys})
