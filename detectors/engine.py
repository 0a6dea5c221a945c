"""The detector: reports in, incident events out. No I/O, no clock, no asyncio.

Time is event time. The watermark is the highest event time seen minus `allowed_lateness`;
reports wait in a buffer until the watermark passes them and are then processed in
(event time, id) order, interleaved with timers (throttled updates, quiet resolution), so any
arrival order within the lateness bound yields the same decisions, byte for byte. A report that
arrives behind the watermark but within the window is "late": it is processed at once and can
still join and validate its cluster. One older than the watermark minus the window is
`too_late`: it can no longer change any decision.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import NamedTuple

from geoincident.detectors.actions import Action, ActionError
from geoincident.detectors.clusters import (
    AccuracyWeights,
    Cluster,
    ClusterIndex,
    FreeReports,
    window_score,
)
from geoincident.detectors.events import OPENED, RESOLVED, UPDATED, IncidentEvent
from geoincident.detectors.lifecycle import (
    STATUS_ACKNOWLEDGED,
    STATUS_OPEN,
    STATUS_RESOLVED,
    Incident,
    incident_id_for,
)
from geoincident.detectors.params import CategoryParams, DetectorParams
from geoincident.detectors.report import Report
from geoincident.detectors.significance import (
    MIN_SPAN_MS,
    Background,
    Verdict,
    judge,
    poisson_tail,
)
from geoincident.detectors.surge import SurgeDetector
from geoincident.detectors.taxonomy import UNCLASSIFIED
from geoincident.detectors.timefmt import format_ms, parse_rfc3339_ms
from geoincident.geo.distance import WeightedCentroid, haversine_m

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
UNCLASSIFIED_OUTCOME = "unclassified"
TOO_LATE = "too_late"


class Observed(NamedTuple):
    """What became of one report: its outcome and the events it caused at once (a late
    report is processed on arrival; an on-time one waits for the watermark)."""

    outcome: str
    events: list[IncidentEvent]


_QUIET = 0
_UPDATE = 1
_FORGET = 2


class Detector:
    """`observe(report) -> Observed`, `advance(watermark_ms) -> events`; state in plain attributes.

    The detector never moves event time itself: its driver (stream/runtime.py, the same for
    the worker, replay and the tests) raises the watermark from what its partitions have seen
    and drains what the watermark passed.
    """

    def __init__(self, params: DetectorParams | None = None) -> None:
        self.params = params = params or DetectorParams()
        self.index = ClusterIndex(params.max_radius_m)
        self.free = FreeReports(params.max_radius_m)
        self.background = Background(params.significance.neighbourhood_m)
        self.accuracy = AccuracyWeights(params.default_accuracy_m, params.accuracy_floor_m)
        self.incidents: dict[str, Incident] = {}
        # blocked reporter/device -> what drain() had processed when the block came (None:
        # nothing yet): reports processed before it counted, and count again after a restart
        self.blocked_reporters: dict[str, int | None] = {}
        self.blocked_devices: dict[str, int | None] = {}
        self.max_ts_ms: int | None = None
        self.watermark_ms: int | None = None
        # What drain() has processed up to; the watermark may be ahead of it between drains.
        self._drained_ms: int | None = None
        self.clock_ms: int | None = None
        self.counts: dict[str, int] = {
            ACCEPTED: 0,
            DUPLICATE: 0,
            UNCLASSIFIED_OUTCOME: 0,
            TOO_LATE: 0,
        }
        self._pending: list[tuple[int, str, Report]] = []
        # (leaves the window at, sequence, report): every processed report, until it leaves
        self._expiry: list[tuple[int, int, Report]] = []
        # report id -> None while pending, the Report while free, its incident's Cluster after
        self._seen: dict[str, Cluster | Report | None] = {}
        # event time of the first report processed: rates are never divided by time not seen
        self._first_ms: int | None = None
        # groups that reached the threshold but not significance (a metric)
        self.chance_groups = 0
        # after a restore: report id -> the cluster of the incident it belonged to
        self._restored_members: dict[str, Cluster] = {}
        self._timers: list[tuple[int, int, int, str]] = []
        self._cluster_of: dict[str, Cluster] = {}
        self._seq = 0
        self._lateness_ms = params.allowed_lateness_ms
        self._source_weights = dict(params.source_weights)
        self.surge = SurgeDetector(
            params.surge, cell_resolution=params.resolution, max_report_ids=params.max_report_ids
        )
        self._rebuilding = False
        self._category_params = {name: params.for_category(name) for name in params.taxonomy.names}
        self._scales: dict[str, list[tuple[float, float]]] = {}
        significance = params.significance
        self._budget_per_day = significance.max_false_per_day / max(1, len(params.taxonomy.names))

    # ------------------------------------------------------------------ public surface

    @property
    def state_reports(self) -> int:
        """Reports held: waiting for the watermark, or members inside a cluster's window."""
        return len(self._pending) + len(self._expiry)

    @property
    def active_cells(self) -> int:
        return self.index.active_cells() + self.free.active_cells()

    def open_incidents(self) -> list[Incident]:
        return [incident for incident in self.incidents.values() if incident.is_open]

    def observe(self, report: Report) -> Observed:
        """Take one parsed report. An on-time report waits for the watermark (`drain`); one
        behind the watermark but inside its window is processed at once; one older than that
        is `too_late` and changes nothing."""
        if report.category == UNCLASSIFIED:
            return self._outcome(UNCLASSIFIED_OUTCOME)
        if report.id in self._seen:
            return self._outcome(DUPLICATE)
        ts_ms = report.ts_ms
        watermark = self.watermark_ms
        if watermark is not None and ts_ms < watermark:
            window_ms = self._params_of(report.category).window_ms
            if ts_ms < watermark - window_ms:
                return self._outcome(TOO_LATE)
            # What the watermark passed goes first, as if it had been drained at once.
            drained = self.drain()
            self._accept(report)
            weight = self._weight(report)
            # the surge counts it first: a local incident it opens sees the surge it is part of
            events = self.surge.observe(report) if weight > 0 else []
            events = [*drained, *events, *self._process(report, True, weight)]
            return Observed(ACCEPTED, events)
        self._accept(report)
        heapq.heappush(self._pending, (ts_ms, report.id, report))
        if self.max_ts_ms is None or ts_ms > self.max_ts_ms:
            self.max_ts_ms = ts_ms
        return Observed(ACCEPTED, [])

    def advance(self, watermark_ms: int) -> list[IncidentEvent]:
        """Move event time forward (never back): process what the watermark has passed."""
        return self._run(watermark_ms)

    def flush(self) -> list[IncidentEvent]:
        """End of input: the watermark moves to the latest event time seen."""
        if self.max_ts_ms is None:
            return []
        events = list(self._run(self.max_ts_ms))
        # Throttled updates already decided but not yet due are emitted at their due time: no
        # more input can change them, and the output should end with each incident's last state.
        # Quiet resolutions are not: the input ended, it did not fall quiet for an hour.
        for due_ms, _, kind, incident_id in sorted(self._timers):
            if kind == _UPDATE:
                self._fire(kind, incident_id, due_ms, events)
        self._timers = [timer for timer in self._timers if timer[2] != _UPDATE]
        heapq.heapify(self._timers)
        events.extend(self.surge.flush())
        return events

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict:
        """The durable part of the state: incidents, timers, clocks, counters, blocks.

        Reports in windows are not in it: after a restart they are rebuilt by reading the input
        again (`rebuild`), the way Kafka Streams uses a source topic as its own changelog; that
        keeps a checkpoint small however busy the stream is.
        """
        return {
            "incidents": self.incidents,
            "timers": list(self._timers),
            "max_ts_ms": self.max_ts_ms,
            # what was processed: reports past it are pending, and rebuilt as pending
            "watermark_ms": self._drained_ms,
            "clock_ms": self.clock_ms,
            "counts": dict(self.counts),
            "blocked_reporters": dict(sorted(self.blocked_reporters.items())),
            "blocked_devices": dict(sorted(self.blocked_devices.items())),
            "seq": self._seq,
            "first_ms": self._first_ms,
            "chance_groups": self.chance_groups,
            "surge": self.surge.snapshot(),
        }

    def restore(self, snapshot: dict) -> None:
        """Start from a snapshot (a fresh detector only); then `rebuild` the windows."""
        self.incidents = snapshot["incidents"]
        self._timers = list(snapshot["timers"])
        heapq.heapify(self._timers)
        self.max_ts_ms = snapshot["max_ts_ms"]
        self.watermark_ms = self._drained_ms = snapshot["watermark_ms"]
        self.clock_ms = snapshot["clock_ms"]
        self.counts.update(snapshot["counts"])
        self.blocked_reporters = dict(snapshot["blocked_reporters"])
        self.blocked_devices = dict(snapshot["blocked_devices"])
        self._seq = snapshot["seq"]
        self._first_ms = snapshot["first_ms"]
        self.chance_groups = snapshot["chance_groups"]
        self.surge.restore(snapshot["surge"])
        restored: dict[str, Cluster] = {}
        for incident in self.incidents.values():
            cluster = Cluster(incident)
            self._cluster_of[incident.incident_id] = cluster
            if incident.is_open:
                self.index.insert(cluster)
            if incident.superseded_by is None:  # a superseded one's members are the survivor's
                for report_id in incident.members:
                    restored[report_id] = cluster
        self._restored_members = restored

    def rebuild(self, reports: Iterable[Report]) -> None:
        """Refill the windows (local and surge) with reports read again after a restart;
        nothing is emitted or counted twice. Feed the reports that were in state at the
        checkpoint."""
        watermark = self.watermark_ms
        clock = self.clock_ms
        replayed = []
        replayed_ids: set[str] = set()  # a record read twice (produced twice) counts once
        for report in reports:
            if report.category == UNCLASSIFIED or report.id in self._seen:
                continue
            if watermark is not None and report.ts_ms <= watermark:
                if report.id in replayed_ids:
                    continue
                replayed_ids.add(report.id)
                replayed.append(report)
            else:
                self._seen[report.id] = None
                heapq.heappush(self._pending, (report.ts_ms, report.id, report))
        replayed.sort(key=lambda r: (r.ts_ms, r.id))
        self.surge.rebuild(r for r in replayed if self._weight(r, True) > 0)
        self._rebuilding = True
        try:
            for report in replayed:
                window_ms = self._params_of(report.category).window_ms
                if clock is not None and report.ts_ms + window_ms < clock:
                    continue  # it had already left every window
                self._seen[report.id] = None
                self._process(report, False, self._weight(report, True))
        finally:
            self._rebuilding = False
            self._restored_members = {}

    def block(self, reporter: str | None = None, device: str | None = None) -> None:
        """From now on, reports of this reporter/device count for nothing anywhere."""
        if reporter and reporter not in self.blocked_reporters:
            self.blocked_reporters[reporter] = self._drained_ms
        if device and device not in self.blocked_devices:
            self.blocked_devices[device] = self._drained_ms

    def apply_action(self, action: Action) -> list[IncidentEvent]:
        """A dispatcher action (CONTRACT §3). Raises ActionError for unknown incidents/reports."""
        at_ms = parse_rfc3339_ms(action.at) if action.at else (self.clock_ms or 0)
        if action.action == "block":
            self.block(action.reporter, action.device)
            return []
        incident = self.incidents.get(action.incident_id)
        if incident is None and self.surge.is_open(action.incident_id):
            if action.action == "resolve":
                return [self.surge.resolve(action.incident_id, at_ms, "dispatcher")]
            raise ActionError(
                "unsupported_for_surge", f"{action.action} does not apply to a surge; resolve does"
            )
        if incident is None:
            raise ActionError("unknown_incident", f"no incident {action.incident_id!r}")
        incident.history.append(action.to_dict())
        kind = action.action
        if kind == "ack":
            incident.acknowledged_by = action.by
            incident.acknowledged_at = format_ms(at_ms)
            if incident.status == STATUS_OPEN:
                incident.status = STATUS_ACKNOWLEDGED
            return [self._event(incident, UPDATED, at_ms, None)]
        if kind == "assign":
            incident.assigned_to = action.to
            return [self._event(incident, UPDATED, at_ms, None)]
        if kind == "resolve":
            if not incident.is_open:
                raise ActionError("already_resolved", f"{incident.incident_id} is resolved")
            return [self._resolve(incident, "dispatcher", at_ms)]
        if kind == "reopen":
            return self._reopen(incident, at_ms)
        if kind == "flag_report":
            return self._flag(incident, action.report_id or "", at_ms)
        raise ActionError("bad_action", f"unknown action {kind!r}")

    # ------------------------------------------------------------------ the event-time loop

    def _outcome(self, outcome: str) -> Observed:
        self.counts[outcome] += 1
        return Observed(outcome, [])

    def _accept(self, report: Report) -> None:
        self.counts[ACCEPTED] += 1
        self._seen[report.id] = None

    def _params_of(self, category: str):
        found = self._category_params.get(category)
        if found is None:
            found = self._category_params[category] = self.params.for_category(category)
        return found

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _run(self, watermark_ms: int) -> list[IncidentEvent]:
        self.raise_watermark(watermark_ms)
        return self.drain()

    def raise_watermark(self, watermark_ms: int) -> None:
        """Move the watermark (never back) without processing yet: `drain` does that. Reports
        older than the watermark are judged late or too late from now on."""
        if self.watermark_ms is None or watermark_ms > self.watermark_ms:
            self.watermark_ms = watermark_ms

    def drain(self) -> list[IncidentEvent]:
        """Process the reports and timers the watermark has passed, in event-time order.

        Raising the watermark several times and draining once gives the same decisions as
        draining after each raise: every step ticks the clock to its own time first, and a
        late report drains before it is processed.
        """
        watermark_ms = self.watermark_ms
        if watermark_ms is None or (
            self._drained_ms is not None and watermark_ms <= self._drained_ms
        ):
            return []
        self._drained_ms = watermark_ms
        events: list[IncidentEvent] = []
        pending = self._pending
        timers = self._timers
        surge = self.surge
        surge_on = surge.params.enabled
        heappop = heapq.heappop
        process = self._process
        expiry = self._expiry
        blocking = bool(self.blocked_reporters or self.blocked_devices)
        source_weights = self._source_weights
        while True:
            if (
                timers
                and timers[0][0] <= watermark_ms
                and (not pending or timers[0][0] <= pending[0][0])
            ):
                due_ms, _, kind, incident_id = heappop(timers)
                self._tick(due_ms)
                if surge_on:
                    events.extend(surge.advance(due_ms))
                self._fire(kind, incident_id, due_ms, events)
            elif pending and pending[0][0] <= watermark_ms:
                ts_ms, _, report = heappop(pending)
                if self.clock_ms is None or ts_ms > self.clock_ms:
                    if expiry and expiry[0][0] < ts_ms:
                        self._tick(ts_ms)
                    else:
                        self.clock_ms = ts_ms
                if surge_on:
                    if surge.due_by(ts_ms):
                        events.extend(surge.advance(ts_ms))
                    if blocking:
                        weight = self._weight(report)
                    else:
                        source = report.source
                        weight = 1.0 if source is None else source_weights.get(source, 1.0)
                    if weight > 0:
                        produced = surge.observe(report)
                        if produced:
                            events.extend(produced)
                    produced = process(report, False, weight)
                    if produced:
                        events.extend(produced)
                else:
                    produced = process(report, False, self._weight(report))
                    if produced:
                        events.extend(produced)
            else:
                break
        if surge_on:
            events.extend(surge.advance(watermark_ms))
        if self.clock_ms is None or watermark_ms > self.clock_ms:
            self._tick(watermark_ms)
        return events

    def _tick(self, now_ms: int) -> None:
        """Advance the processing clock; members that left every window are forgotten."""
        if self.clock_ms is not None and now_ms <= self.clock_ms:
            return
        self.clock_ms = now_ms
        expiry = self._expiry
        if not expiry or expiry[0][0] >= now_ms:
            return
        heappop = heapq.heappop
        seen = self._seen
        while expiry and expiry[0][0] < now_ms:
            report = heappop(expiry)[2]
            owner = seen.pop(report.id, None)
            if owner is None:
                continue
            if owner.__class__ is Cluster:
                owner.remove_id(report.id)  # type: ignore[union-attr]
            else:
                self._unfree(report)

    def _fire(self, kind: int, incident_id: str, due_ms: int, events: list[IncidentEvent]) -> None:
        incident = self.incidents.get(incident_id)
        if incident is None:
            return
        if kind == _QUIET:
            if not incident.is_open:
                return
            quiet_until = incident.last_ts_ms + self.params.resolve_after_ms
            if quiet_until > due_ms and not self._only_background(incident, due_ms):
                self._timer(quiet_until, _QUIET, incident_id)
                return
            events.append(self._resolve(incident, "quiet", due_ms))
        elif kind == _UPDATE:
            if incident.is_open and incident.update_due:
                events.append(self._event(incident, UPDATED, due_ms, None))
        elif kind == _FORGET:
            if not incident.is_open and incident.resolved_ts_ms is not None:
                if incident.resolved_ts_ms + self.params.retain_resolved_ms <= due_ms:
                    del self.incidents[incident_id]
                    self._cluster_of.pop(incident_id, None)

    def _timer(self, due_ms: int, kind: int, incident_id: str) -> None:
        heapq.heappush(self._timers, (due_ms, self._next_seq(), kind, incident_id))

    # ------------------------------------------------------------------ clustering

    def _weight(self, report: Report, processed_before_restart: bool = False) -> float:
        """A report's weight: its source's, or 0 once its reporter or device is blocked. Read
        again after a restart, a report gets the weight it had when it was first processed: a
        block counts only for reports past what had been processed when it came."""
        if self.blocked_reporters or self.blocked_devices:
            for blocked, key in (
                (self.blocked_reporters, report.reporter),
                (self.blocked_devices, report.device),
            ):
                if key is not None and key in blocked:
                    since = blocked[key]
                    if not processed_before_restart or since is None or report.ts_ms > since:
                        return 0.0
        if report.source is None:
            return 1.0
        return self._source_weights.get(report.source, 1.0)

    def _process(self, report: Report, late: bool, weight: float) -> list[IncidentEvent]:
        category = report.category
        category_params = self._category_params.get(category) or self._params_of(category)
        self._seq += 1
        heapq.heappush(self._expiry, (report.ts_ms + category_params.window_ms, self._seq, report))
        if self._first_ms is None or report.ts_ms < self._first_ms:
            self._first_ms = report.ts_ms
        if self._rebuilding:
            self._rebuild_one(report, weight, category_params)
            return []
        cluster = self._nearest_incident(report, category_params.radius_m)
        if cluster is not None:
            cluster.add(report, weight)
            self._seen[report.id] = cluster
            incident = cluster.incident
            events: list[IncidentEvent] = []
            self._join_incident(incident, report, weight, events)
            cluster.lat, cluster.lon = incident.centre()
            self.index.moved(cluster)
            self._merge_neighbours(cluster, report, events)
            return events
        self._free(report, weight)
        return self._try_open(report, late, category_params)

    def _nearest_incident(
        self, report: Report, radius_m: float, incomplete: bool = False
    ) -> Cluster | None:
        """The open incident a report joins: the nearest whose centre and opening place are
        both within the radius (ties: the older). `incomplete`: only among incidents too large
        to list every member."""
        near = self.index.near(report.category, report.lat, report.lon, radius_m)
        if not near:
            return None
        kept = []
        for entry in near:
            incident = entry[1].incident
            if incomplete and incident.members_complete:
                continue
            anchor = incident.anchor
            if anchor is None or haversine_m(report.lat, report.lon, *anchor) <= radius_m:
                kept.append(entry)
        return min(kept, key=_preference)[1] if kept else None

    def _free(self, report: Report, weight: float) -> None:
        """A report no incident took: it waits for company, and is background meanwhile
        (members of incidents are explained by their incident, not by chance)."""
        self.free.add(report, weight)
        self.background.add(report.category, report.lat, report.lon)
        self._seen[report.id] = report

    def _unfree(self, report: Report) -> None:
        """A free report joins an incident or leaves the window: no longer waiting, nor
        background."""
        self.free.remove(report)
        self.background.remove(report.category, report.lat, report.lon)

    def _rebuild_one(self, report: Report, weight: float, category_params: CategoryParams) -> None:
        """A report read again after a restart goes back where it was: into its incident's
        window (the checkpoint lists members) or among the free reports."""
        cluster = self._restored_members.get(report.id)
        if cluster is None:
            # incidents too large to list every member fall back to the distance rule
            cluster = self._nearest_incident(report, category_params.radius_m, incomplete=True)
        if cluster is not None:
            cluster.add(report, weight)
            self._seen[report.id] = cluster
        else:
            self._free(report, weight)

    def _try_open(
        self, report: Report, late: bool, category_params: CategoryParams
    ) -> list[IncidentEvent]:
        """Do the free reports around this one agree enough, and stand out from the background?

        In order, the window is the one ending at this report. A late report can complete a
        window that ends at a later report: the first such window wins (its end is the
        `validated_at`), as if the report had arrived in time.
        """
        window_ms = category_params.window_ms
        threshold = category_params.threshold
        ts_ms = report.ts_ms
        around = self.free.near(
            report.category,
            report.lat,
            report.lon,
            category_params.radius_m,
            ts_ms - window_ms,
            ts_ms + window_ms if late else ts_ms,
        )
        total = 0.0
        for _, weight in around:
            total += weight
        if total < threshold:  # an upper bound of the independent weight
            return []
        ends = sorted({entry[0].ts_ms for entry in around if entry[0].ts_ms >= ts_ms})
        for end_ms in ends:
            group = [entry for entry in around if end_ms - window_ms <= entry[0].ts_ms <= end_ms]
            if window_score(group, end_ms - window_ms, end_ms)[0] < threshold:
                continue
            events = self._open_group(group, end_ms, report, category_params)
            if events is not None:
                return events
        return []

    def _centre(self, group: list[tuple[Report, float]]) -> tuple[float, float]:
        centroid = WeightedCentroid()
        accuracy = self.accuracy
        for member, _ in group:
            centroid.add(member.lat, member.lon, accuracy(member.accuracy_m))
        return centroid.latlon()

    def _open_group(
        self,
        group: list[tuple[Report, float]],
        end_ms: int,
        trigger: Report,
        category_params: CategoryParams,
    ) -> list[IncidentEvent] | None:
        """Open an incident of the free reports around the group's centre, if they pass the
        threshold and the significance test; None when they do not."""
        window_ms = category_params.window_ms
        threshold = category_params.threshold
        lat, lon = self._centre(group)
        members = self.free.near(
            trigger.category, lat, lon, category_params.radius_m, end_ms - window_ms, end_ms
        )
        if window_score(members, end_ms - window_ms, end_ms)[0] < threshold:
            members = group
        verdict = self._significance(members, lat, lon, end_ms, category_params)
        if not verdict.significant:
            self.chance_groups += 1
            return None
        return self._open(members, end_ms, trigger, category_params)

    # ------------------------------------------------------------------ significance

    def _scales_of(
        self, category: str, category_params: CategoryParams
    ) -> list[tuple[float, float]]:
        scales = self._scales.get(category)
        if scales is None:
            significance = self.params.significance
            radii = sorted({r for r in significance.radii_m if r < category_params.radius_m})
            radii.append(category_params.radius_m)
            windows = sorted({w for w in significance.windows_s if w < category_params.window_s})
            windows.append(category_params.window_s)
            scales = self._scales[category] = [(r, w) for r in radii for w in windows]
        return scales

    def _significance(
        self,
        members: list[tuple[Report, float]],
        lat: float,
        lon: float,
        end_ms: int,
        category_params: CategoryParams,
    ) -> Verdict:
        """The expectation-based scan test of detectors/significance.py at each scale."""
        if not self.params.significance.enabled:
            return _PASS
        category = members[0][0].category
        scales = self._scales_of(category, category_params)
        now_ms = self.clock_ms if self.clock_ms is not None else end_ms
        span_min = self._span_ms(now_ms, category_params.window_ms) / 60_000.0
        rate = self._background_rate(category, lat, lon, members, now_ms, span_min)
        area_rate = self.background.total(category) / span_min
        distances = [haversine_m(lat, lon, m.lat, m.lon) for m, _ in members]
        # The summed weight inside a scale bounds its independent weight from above, and the
        # chance rate falls as the count grows: a scale that fails with the bound fails, so
        # the union-finds run only where they can change the verdict (most groups in a busy
        # city fail every scale on the bound alone).
        bounds = []
        for radius_m, window_s in scales:
            start_ms = end_ms - int(window_s * 1000)
            total = 0.0
            for (member, weight), distance in zip(members, distances, strict=True):
                if distance <= radius_m and member.ts_ms >= start_ms:
                    total += weight
            bounds.append(total)
        budget = self._budget_per_day
        bounded = judge(scales, bounds, rate, area_rate, budget)
        if not bounded.significant:
            return bounded
        counts = []
        for (radius_m, window_s), bound in zip(scales, bounds, strict=True):
            if not judge(
                [(radius_m, window_s)], [bound], rate, area_rate, budget * len(scales)
            ).significant:
                counts.append(0.0)  # cannot pass: its exact count is no higher than the bound
                continue
            start_ms = end_ms - int(window_s * 1000)
            inside = [
                entry
                for entry, distance in zip(members, distances, strict=True)
                if distance <= radius_m and entry[0].ts_ms >= start_ms
            ]
            counts.append(window_score(inside, start_ms, end_ms)[0])
        return judge(scales, counts, rate, area_rate, budget)

    def _only_background(self, incident: Incident, now_ms: int) -> bool:
        """Whether the members an incident gained over the last `resolve_after` are no more
        than the background around it brings to any place its size: then nothing is happening
        there any more. Only where the background is expected to bring at least one report
        into its radius in that time; where reports are rare a single member keeps an
        incident open, as before. Downtown the three or four strangers an hour who pass
        within its radius do not."""
        significance = self.params.significance
        if not significance.enabled:
            return False
        since_ms = now_ms - self.params.resolve_after_ms
        recent = [ts_ms for ts_ms in incident.recent_ts if ts_ms > since_ms]
        incident.recent_ts = recent
        if not recent:
            return True
        category_params = self._params_of(incident.category)
        lat, lon = incident.centre()
        span_min = self._span_ms(now_ms, category_params.window_ms) / 60_000.0
        rate = self._background_rate(incident.category, lat, lon, [], now_ms, span_min)
        area_km2 = math.pi * (category_params.radius_m / 1000.0) ** 2
        expected = rate * area_km2 * self.params.resolve_after_s / 60.0
        if expected < 1.0:
            return False  # the background brings nobody: any member is news, as before
        return poisson_tail(len(recent), expected) >= significance.still_active_p

    def _span_ms(self, now_ms: int, window_ms: int) -> int:
        """Event time a window-long count covers: the window, or less at a cold start."""
        seen_ms = now_ms - (self._first_ms if self._first_ms is not None else now_ms)
        return max(MIN_SPAN_MS, min(window_ms, seen_ms))

    def _background_rate(
        self,
        category: str,
        lat: float,
        lon: float,
        members: list[tuple[Report, float]],
        now_ms: int,
        span_min: float,
    ) -> float:
        """Reports of the category per km² per minute around a group, not counting the group:
        the highest of the neighbourhood over the local window (`span_min` of event time), the
        surge region's short-term rate and its long-term baseline, and the surge baseline
        floor."""
        own = len(members)  # free reports still, so counted in the background
        count, area_km2 = self.background.around(category, lat, lon, own)
        rate = max(0, count - own) / area_km2 / span_min
        surge = self.surge
        region_rate = surge.region_rate_per_km2_min(category, lat, lon, members, now_ms)
        return max(rate, region_rate)

    # ------------------------------------------------------------------ incidents

    def _event(
        self, incident: Incident, name: str, at_ms: int, trigger: str | None
    ) -> IncidentEvent:
        """An event of a local incident, carrying the open surge of its category around it."""
        lat, lon = incident.centre()
        incident.surge_id = self.surge.surge_at(incident.category, lat, lon)
        return incident.event(name, at_ms, trigger)

    def _open(
        self,
        members: list[tuple[Report, float]],
        validated_ms: int,
        trigger: Report,
        category_params: CategoryParams,
    ) -> list[IncidentEvent]:
        params = self.params
        founder = members[0][0]  # members are in (event time, id) order
        category = founder.category
        incident = Incident(
            incident_id_for(category, founder.ts_ms, founder.id),
            category,
            category_params.threshold,
            params.resolution,
            validated_ms,
            params.max_report_ids,
        )
        incident.seniority = (founder.ts_ms, founder.id)
        accuracy = self.accuracy
        for member, weight in members:
            incident.add(member, weight, accuracy(member.accuracy_m))
        cluster = Cluster(incident)
        seen = self._seen
        for member, weight in members:
            self._unfree(member)
            cluster.add(member, weight)
            seen[member.id] = cluster
        lat, lon = cluster.lat, cluster.lon
        incident.anchor = (lat, lon)
        if params.geofences is not None:
            incident.jurisdiction = params.geofences.lookup(lat, lon)
        self.index.insert(cluster)
        self.incidents[incident.incident_id] = incident
        self._cluster_of[incident.incident_id] = cluster
        emitted_ms = max(validated_ms, self.clock_ms or validated_ms)
        incident.last_emit_ts_ms = emitted_ms
        events = [self._event(incident, OPENED, emitted_ms, trigger.id)]
        self._timer(incident.last_ts_ms + params.resolve_after_ms, _QUIET, incident.incident_id)
        self._merge_neighbours(cluster, trigger, events)
        return events

    def _join_incident(
        self, incident: Incident, report: Report, weight: float, events: list[IncidentEvent]
    ) -> None:
        if incident.add(report, weight, self.accuracy(report.accuracy_m)):
            self._updated(incident, report.id, events)

    def _updated(
        self, incident: Incident, trigger: str | None, events: list[IncidentEvent]
    ) -> None:
        """New independent reporters: emit now, or once the update interval has passed."""
        now_ms = self.clock_ms or 0
        due_ms = incident.last_emit_ts_ms + self.params.update_interval_ms
        if now_ms >= due_ms:
            events.append(self._event(incident, UPDATED, now_ms, trigger))
        elif not incident.update_due:
            incident.update_due = True
            self._timer(due_ms, _UPDATE, incident.incident_id)

    def _merge_neighbours(
        self, cluster: Cluster, report: Report, events: list[IncidentEvent]
    ) -> None:
        """Incidents whose centres came within the radius of each other become one."""
        radius_m = self._params_of(cluster.category).radius_m
        for _ in range(64):  # a cascade ends quickly; the bound only guards against a cycle
            others = [
                (distance, other)
                for distance, other in self.index.near(
                    cluster.category, cluster.lat, cluster.lon, radius_m
                )
                if other is not cluster
            ]
            if not others:
                return
            other = min(others, key=_preference)[1]
            if cluster.seniority <= other.seniority:
                survivor, loser = cluster, other
            else:
                survivor, loser = other, cluster
            self._merge(survivor, loser, report, events)
            cluster = survivor

    def _merge(
        self, survivor: Cluster, loser: Cluster, report: Report, events: list[IncidentEvent]
    ) -> None:
        self.index.remove(loser)
        seen = self._seen
        for member in loser.members:
            survivor.add(member, loser.weight_of(member.id))
            seen[member.id] = survivor
        kept, gone = survivor.incident, loser.incident
        now_ms = self.clock_ms or report.ts_ms
        gone.superseded_by = kept.incident_id
        events.append(self._resolve(gone, "superseded", now_ms))
        groups_before = kept.independence.groups
        kept.absorb(gone)
        if kept.independence.groups > groups_before:
            self._updated(kept, report.id, events)
        kept.last_ts_ms = max(kept.last_ts_ms, gone.last_ts_ms)
        survivor.lat, survivor.lon = kept.centre()
        self.index.moved(survivor)

    # ------------------------------------------------------------------ lifecycle

    def _resolve(self, incident: Incident, reason: str, at_ms: int) -> IncidentEvent:
        incident.status = STATUS_RESOLVED
        incident.resolved_reason = reason
        incident.resolved_ts_ms = at_ms
        cluster = self._cluster_of.get(incident.incident_id)
        if cluster is not None:
            self.index.remove(cluster)
        self._timer(at_ms + self.params.retain_resolved_ms, _FORGET, incident.incident_id)
        return self._event(incident, RESOLVED, at_ms, None)

    def _reopen(self, incident: Incident, at_ms: int) -> list[IncidentEvent]:
        if incident.is_open:
            raise ActionError("not_resolved", f"{incident.incident_id} is open")
        incident.status = STATUS_OPEN
        incident.resolved_reason = None
        incident.resolved_ts_ms = None
        incident.superseded_by = None
        # Quiet is counted again from the reopening, not from the last report.
        incident.last_ts_ms = max(incident.last_ts_ms, at_ms)
        cluster = self._cluster_of.get(incident.incident_id)
        if cluster is not None and not cluster.indexed:
            cluster.lat, cluster.lon = incident.centre()
            self.index.insert(cluster)
        self._timer(
            incident.last_ts_ms + self.params.resolve_after_ms, _QUIET, incident.incident_id
        )
        return [self._event(incident, UPDATED, at_ms, None)]

    def _flag(self, incident: Incident, report_id: str, at_ms: int) -> list[IncidentEvent]:
        if report_id not in incident.members:
            raise ActionError(
                "unknown_report", f"report {report_id!r} is not a member of {incident.incident_id}"
            )
        if not incident.members_complete:
            raise ActionError(
                "incident_too_large",
                f"{incident.incident_id} has too many members to re-score; block the reporter",
            )
        incident.rescore_without(report_id)
        cluster = self._cluster_of.get(incident.incident_id)
        if cluster is not None:
            cluster.remove_id(report_id)
        if incident.is_open and incident.independence.score < incident.threshold:
            return [self._resolve(incident, "retracted", at_ms)]
        return [self._event(incident, UPDATED, at_ms, None)]


def _preference(entry: tuple[float, Cluster]) -> tuple[float, int, str]:
    """Join the nearest incident; ties go to the oldest."""
    distance, cluster = entry
    return (distance, *cluster.seniority)


_PASS = Verdict(True, 0.0, 0.0, 0.0, 0.0, 0.0)
