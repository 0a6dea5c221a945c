"""The detector: reports in, incident events out. No I/O, no clock, no asyncio.

Time is event time. The watermark is the highest event time seen minus `allowed_lateness`;
reports wait in a buffer until the watermark passes them and are then processed in
(event time, id) order, interleaved with timers (throttled updates, quiet resolution), so any
arrival order within the lateness bound yields the same decisions, byte for byte. A report that
arrives behind the watermark but within the window is "late": it is processed at once and can
still join and validate its cluster. One older than the watermark minus the window is
`too_late`: it can no longer change any decision.

This module is that event-time loop and the checkpoints; the rest is in pieces it composes:
grouping (where a report goes: an incident, or free), chance (significance), incidents (the
incidents and their transitions), dispatch (dispatcher actions and report weights), timers,
and the surge detector (surge.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import NamedTuple

from geoincident.detectors.actions import Action
from geoincident.detectors.bursts import NewReporterBursts
from geoincident.detectors.chance import Chance
from geoincident.detectors.clusters import AccuracyWeights, Cluster
from geoincident.detectors.dispatch import Dispatcher
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.grouping import Grouping
from geoincident.detectors.incidents import UPDATE, IncidentBook
from geoincident.detectors.lifecycle import Incident
from geoincident.detectors.params import DetectorParams
from geoincident.detectors.report import Report
from geoincident.detectors.reputation import Reputation
from geoincident.detectors.surge import SurgeDetector
from geoincident.detectors.taxonomy import UNCLASSIFIED
from geoincident.detectors.timers import Timers

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
UNCLASSIFIED_OUTCOME = "unclassified"
TOO_LATE = "too_late"


REPUTATION_SWEEP_MS = 10 * 60_000


class Observed(NamedTuple):
    """What became of one report: its outcome and the events it caused at once (a late
    report is processed on arrival; an on-time one waits for the watermark)."""

    outcome: str
    events: list[IncidentEvent]


class Detector:
    """`observe(report) -> Observed`, `advance(watermark_ms) -> events`; state in plain attributes.

    The detector never moves event time itself: its driver (stream/runtime.py, the same for
    the worker, replay and the tests) raises the watermark from what its partitions have seen
    and drains what the watermark passed.
    """

    def __init__(self, params: DetectorParams | None = None) -> None:
        self.params = params = params or DetectorParams()
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
        # accepted, waiting for the watermark: a heap in (event time, id) order (Report's)
        self._pending: list[Report] = []
        # report id -> None while pending, the Report while free, its incident's Cluster after
        self._seen: dict[str, Cluster | Report | None] = {}
        # after a restore, until the rebuild: report id -> the cluster of its incident
        self._restored_members: dict[str, Cluster] = {}
        self.timers = Timers()
        self.surge = SurgeDetector(
            params.surge,
            cell_resolution=params.resolution,
            max_report_ids=params.max_report_ids,
            shard_resolution=params.shard_resolution,
        )
        accuracy = AccuracyWeights(params.default_accuracy_m, params.accuracy_floor_m)
        self.chance = Chance(params, self.surge)
        self.reputation = Reputation(params.reputation)
        # reporters whose history has faded are forgotten at the first report processed at or
        # after this event time (every REPUTATION_SWEEP_MS): a time in the ordered loop, so the
        # same input forgets at the same point however it was cut into batches
        self._reputation_sweep_ms = 0
        self.book = IncidentBook(params, self.timers, self.surge, self.chance, accuracy, self._seen)
        self.grouping = Grouping(
            params, self.book, self.chance, accuracy, self._seen, self.reputation
        )
        self.dispatcher = Dispatcher(params, self.book, self.surge, self.reputation)
        # many first-time reporters at one spot: counted for an operator, decides nothing
        self.bursts = NewReporterBursts(params.bursts, self.reputation, self.dispatcher)

    # ------------------------------------------------------------------ public surface

    @property
    def incidents(self) -> dict[str, Incident]:
        return self.book.incidents

    @property
    def blocked_reporters(self) -> dict[str, int | None]:
        return self.dispatcher.blocked_reporters

    @property
    def blocked_devices(self) -> dict[str, int | None]:
        return self.dispatcher.blocked_devices

    @property
    def chance_groups(self) -> int:
        """Groups that reached the threshold but not significance."""
        return self.grouping.chance_groups

    @property
    def state_reports(self) -> int:
        """Reports held: waiting for the watermark, or members inside a cluster's window."""
        return len(self._pending) + len(self.grouping.expiry)

    @property
    def active_cells(self) -> int:
        return self.book.index.active_cells() + self.grouping.free.active_cells()

    def open_incidents(self) -> list[Incident]:
        return self.book.open_incidents()

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
            window_ms = self.grouping.params_of(report.category).window_ms
            if ts_ms < watermark - window_ms:
                return self._outcome(TOO_LATE)
            # What the watermark passed goes first, as if it had been drained at once.
            drained = self.drain()
            self._accept(report)
            weight = self.dispatcher.weight(report)
            # the surge counts it first: a local incident it opens sees the surge it is part of
            events = self.surge.observe(report) if weight > 0 and not report.halo else []
            if self.bursts.on and not report.halo:  # a halo copy: its owner counts it
                self.bursts.observe(report)
            own = self.grouping.process(report, True, weight, self.clock_ms)
            return Observed(ACCEPTED, [*drained, *events, *own])
        self._accept(report)
        heapq.heappush(self._pending, report)
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
        self.raise_watermark(self.max_ts_ms)
        events = self.drain(through=True)
        # Throttled updates already decided but not yet due are emitted at their due time: no
        # more input can change them, and the output should end with each incident's last state.
        # Quiet resolutions are not: the input ended, it did not fall quiet for an hour.
        for due_ms, _, kind, incident_id in self.timers.take(UPDATE):
            self.book.fire(kind, incident_id, due_ms, events)
        events.extend(self.surge.flush())
        return events

    def block(self, reporter: str | None = None, device: str | None = None) -> None:
        """From now on, reports of this reporter/device count for nothing anywhere."""
        self.dispatcher.block(reporter, device, self._drained_ms)

    def apply_action(self, action: Action) -> list[IncidentEvent]:
        """A dispatcher action (CONTRACT §3). Raises ActionError for unknown incidents/reports."""
        return self.dispatcher.apply(action, self.clock_ms, self._drained_ms)

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict:
        """The durable part of the state: incidents, timers, clocks, counters, blocks.

        Reports in windows are not in it: after a restart they are rebuilt by reading the input
        again (`rebuild`), the way Kafka Streams uses a source topic as its own changelog; that
        keeps a checkpoint small however busy the stream is.
        """
        return {
            "incidents": self.book.incidents,
            "timers": self.timers.snapshot(),
            "max_ts_ms": self.max_ts_ms,
            # what was processed: reports past it are pending, and rebuilt as pending
            "watermark_ms": self._drained_ms,
            "clock_ms": self.clock_ms,
            "counts": dict(self.counts),
            "blocked_reporters": dict(sorted(self.blocked_reporters.items())),
            "blocked_devices": dict(sorted(self.blocked_devices.items())),
            "seq": self.timers.seq,
            "first_ms": self.chance.first_ms,
            "chance_groups": self.grouping.chance_groups,
            "surge": self.surge.snapshot(),
            "reputation": self.reputation.rows(),
            "reputation_sweep_ms": self._reputation_sweep_ms,
            "bursts": self.bursts.snapshot(),
        }

    def restore(self, snapshot: dict) -> None:
        """Start from a snapshot (a fresh detector only); then `rebuild` the windows."""
        self._restored_members = self.book.restore(snapshot["incidents"])
        self.timers.restore(snapshot["timers"], snapshot["seq"])
        self.max_ts_ms = snapshot["max_ts_ms"]
        self.watermark_ms = self._drained_ms = snapshot["watermark_ms"]
        self.clock_ms = snapshot["clock_ms"]
        self.counts.update(snapshot["counts"])
        self.dispatcher.blocked_reporters = dict(snapshot["blocked_reporters"])
        self.dispatcher.blocked_devices = dict(snapshot["blocked_devices"])
        self.chance.first_ms = snapshot["first_ms"]
        self.grouping.chance_groups = snapshot["chance_groups"]
        self.surge.restore(snapshot["surge"])
        self.reputation.restore(snapshot["reputation"])
        self._reputation_sweep_ms = snapshot["reputation_sweep_ms"]
        self.bursts.restore(snapshot["bursts"])

    def rebuild(self, reports: Iterable[Report]) -> None:
        """Refill the windows (local and surge) with reports read again after a restart;
        nothing is emitted or counted twice. Feed the reports that were in state at the
        checkpoint."""
        watermark = self.watermark_ms
        clock = self.clock_ms
        seen = self._seen
        replayed = []
        replayed_ids: set[str] = set()  # a record read twice (produced twice) counts once
        for report in reports:
            if report.category == UNCLASSIFIED or report.id in seen:
                continue
            if watermark is not None and report.ts_ms < watermark:
                if report.id in replayed_ids:
                    continue
                replayed_ids.add(report.id)
                replayed.append(report)
            else:
                seen[report.id] = None
                heapq.heappush(self._pending, report)
        replayed.sort(key=lambda r: (r.ts_ms, r.id))
        weight = self.dispatcher.weight
        self.surge.rebuild([r for r in replayed if not r.halo and weight(r, True) > 0])
        grouping = self.grouping
        try:
            for report in replayed:
                window_ms = grouping.params_of(report.category).window_ms
                if clock is not None and report.ts_ms + window_ms < clock:
                    continue  # it had already left every window
                seen[report.id] = None
                grouping.replay(report, weight(report, True), self._restored_members)
        finally:
            self._restored_members = {}

    # ------------------------------------------------------------------ the event-time loop

    def _outcome(self, outcome: str) -> Observed:
        self.counts[outcome] += 1
        return Observed(outcome, [])

    def _accept(self, report: Report) -> None:
        self.counts[ACCEPTED] += 1
        self._seen[report.id] = None

    def _run(self, watermark_ms: int) -> list[IncidentEvent]:
        self.raise_watermark(watermark_ms)
        return self.drain()

    def raise_watermark(self, watermark_ms: int) -> None:
        """Move the watermark (never back) without processing yet: `drain` does that. Reports
        older than the watermark are judged late or too late from now on."""
        if self.watermark_ms is None or watermark_ms > self.watermark_ms:
            self.watermark_ms = watermark_ms

    def drain(self, through: bool = False) -> list[IncidentEvent]:
        """Process the reports the watermark has passed (event time before it; `through`, at
        the end of the input: at it too) and the timers due by it, in event-time order.

        A report exactly at the watermark is on time (at most the lateness bound behind the
        latest), so it waits: one of the same time and a lower id may still arrive, and the
        order must not depend on where the input was cut. Raising the watermark several times
        and draining once gives the same decisions as draining after each raise: every step
        ticks the clock to its own time first, and a late report drains before it is processed.
        """
        watermark_ms = self.watermark_ms
        if watermark_ms is None:
            return []
        limit_ms = watermark_ms + 1 if through else watermark_ms  # reports strictly before it
        if self._drained_ms is not None and limit_ms <= self._drained_ms:
            return []
        self._drained_ms = limit_ms
        events: list[IncidentEvent] = []
        pending = self._pending
        timers = self.timers.heap
        # The compiled core calls a native method directly (no bound method, no argument
        # parsing) only when it is called on its object: no `process = grouping.process` here.
        book = self.book
        surge = self.surge
        surge_on = surge.params.enabled
        heappop = heapq.heappop
        grouping = self.grouping
        expiry = grouping.expiry
        dispatcher = self.dispatcher
        # the source's weight alone, unless a block or reputation may lower it
        blocking = bool(
            dispatcher.blocked_reporters or dispatcher.blocked_devices or dispatcher.reputation_on
        )
        reputation_on = dispatcher.reputation_on
        source_weights = dispatcher.source_weights
        bursts = self.bursts
        bursts_on = bursts.on
        while True:
            if (
                timers
                and timers[0][0] <= watermark_ms
                and (not pending or timers[0][0] <= pending[0].ts_ms)
            ):
                due_ms, _, kind, incident_id = heappop(timers)
                self._tick(due_ms)
                if surge_on:
                    events.extend(surge.advance(due_ms))
                book.fire(kind, incident_id, due_ms, events)
            elif pending and pending[0].ts_ms < limit_ms:
                report = heappop(pending)
                ts_ms = report.ts_ms
                clock = self.clock_ms
                if clock is None or ts_ms > clock:
                    self.clock_ms = clock = ts_ms
                    if expiry.next_ms < ts_ms:
                        grouping.forget(ts_ms)
                # at the first report at or past the sweep time, whatever moved the clock
                # (drains end at the watermark): the same report however the input was cut
                if reputation_on and ts_ms >= self._reputation_sweep_ms:
                    self.reputation.forget(ts_ms)
                    self._reputation_sweep_ms = (
                        ts_ms // REPUTATION_SWEEP_MS + 1
                    ) * REPUTATION_SWEEP_MS
                if bursts_on and not report.halo:  # before grouping records history
                    bursts.observe(report)
                if surge_on:
                    if surge.due_by(ts_ms):
                        events.extend(surge.advance(ts_ms))
                    if blocking:
                        weight = dispatcher.weight(report)
                    else:
                        source = report.source
                        weight = 1.0 if source is None else source_weights.get(source, 1.0)
                    if weight > 0 and not report.halo:
                        produced = surge.observe(report)
                        if produced:
                            events.extend(produced)
                    produced = grouping.process(report, False, weight, clock)
                    if produced:
                        events.extend(produced)
                else:
                    produced = grouping.process(report, False, dispatcher.weight(report), clock)
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
        if self.grouping.expiry.next_ms < now_ms:
            self.grouping.forget(now_ms)
