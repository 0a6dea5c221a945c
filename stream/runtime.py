"""The one driver of the detector: records in (raw bytes), messages to produce out.

The worker runs it over the Kafka partitions it is assigned; `geoincident replay` and the
tests run it over one partition with no wall clock. So there is one path from raw bytes to an
incident event or a DLQ record, and one watermark policy: each partition's highest event
time, the slowest partition's less the lateness bound, raised per report and drained at the
end of each batch.

No Kafka client lives here (stream/app.py moves the bytes); besides the detector this class
keeps what a long-running consumer needs: per-partition offsets, idle advance and the wall
clock for `future_timestamp` and `emitted_at` (live only), checkpoints and their restore,
and the tallies the metrics report.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, deque
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from geoincident.detectors.actions import ActionError, parse_action
from geoincident.detectors.bursts import Burst
from geoincident.detectors.engine import (
    ACCEPTED,
    DUPLICATE,
    TOO_LATE,
    UNCLASSIFIED_OUTCOME,
    Detector,
)
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.params import DetectorParams
from geoincident.detectors.report import (
    Rejection,
    Report,
    dlq_record,
    future_problem,
    parse_report,
)
from geoincident.detectors.timefmt import format_ms

log = logging.getLogger("geoincident.worker")

_TOO_LATE = Rejection(TOO_LATE, "older than the watermark minus the window")
# A record whose processing raised (a defect): DLQ reason, and tracebacks logged at most
INTERNAL_ERROR = "internal_error"
MAX_LOGGED_FAILURES = 20
# The outcome of a halo copy (scale-out): detected on, counted by its owner
HALO = "halo"

MARK_SPAN_MS = 1000
_NO_PARTITION = 2**62  # no partition counts for the watermark (yet)
_EVERY = -(2**31)  # `_lowest_other`: no partition is left out
# What the state means (stream/checkpoint.py versions its bytes): 3, free reports and
# significance, a surge spans several regions; 4, the actions topic's offsets.
CHECKPOINT_VERSION = 4


@dataclass(slots=True)
class Outputs:
    """What one step asks the shell to produce, in order."""

    incidents: list[IncidentEvent] = field(default_factory=list)
    dlq: list[bytes] = field(default_factory=list)
    action_dlq: list[bytes] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        self.incidents.extend(other.incidents)
        self.dlq.extend(other.dlq)
        self.action_dlq.extend(other.action_dlq)
        self.outcomes.update(other.outcomes)
        self.rejections.update(other.rejections)
        self.latencies_s.extend(other.latencies_s)


@dataclass(slots=True)
class PartitionClock:
    """Event time as one partition has seen it."""

    max_ts_ms: int | None = None
    last_arrival_wall_ms: int = 0
    next_offset: int = 0
    # False until a record of this partition was processed (or restored from a checkpoint):
    # only then does `next_offset` say where processing stands.
    started: bool = False
    # False while the group has given the partition to another process: it no longer holds
    # event time back, and its offsets stay known for when it comes back.
    assigned: bool = True
    # (first offset of a batch, max event time after it): a report at or before a batch whose
    # running max is older than the windows' start cannot be in state any more, so a restart
    # reads again from the first batch whose running max reaches it.
    # Batches whose running max falls in the same second of event time share one mark (the
    # first batch's offset, the last one's max), so there are about as many marks as seconds
    # in window + lateness, however small the batches: the checkpoint stays small.
    marks: deque[tuple[int, int]] = field(default_factory=deque)

    def mark(self, first_offset: int, max_ts_ms: int) -> None:
        marks = self.marks
        if marks and marks[-1][1] // MARK_SPAN_MS == max_ts_ms // MARK_SPAN_MS:
            marks[-1] = (marks[-1][0], max_ts_ms)  # reading from the earlier offset covers both
        else:
            marks.append((first_offset, max_ts_ms))

    def rebuild_offset(self, oldest_needed_ms: int | None) -> int:
        marks = self.marks
        if oldest_needed_ms is not None:
            while marks and marks[0][1] < oldest_needed_ms:
                marks.popleft()
        return marks[0][0] if marks else self.next_offset


class WorkerCore:
    def __init__(
        self,
        params: DetectorParams,
        topic: str,
        *,
        future_tolerance_s: float = 300.0,
        idle_advance: bool = True,
        actions_topic: str = "incident-actions",
        source_is_file: bool = False,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.params = params
        # Scale-out: whether this detector owns an incident (or surge) id. Its detector also
        # holds copies of incidents owned by a neighbouring region's detector (built from halo
        # reports, so both agree near the border); only the owner emits them.
        self.owns = owns
        self.topic = topic
        # A replay reads a file: its DLQ records name no partition, and the offset is the line.
        self.source_is_file = source_is_file
        self.actions_topic = actions_topic
        self.detector = Detector(params)
        self.partitions: dict[int, PartitionClock] = {}
        self.future_tolerance_ms = int(future_tolerance_s * 1000)
        self.idle_advance = idle_advance
        # report id -> its record timestamp, for the detection latency of the `opened` event
        # it may trigger; forgotten in arrival order once it cannot trigger one any more.
        self._arrivals: dict[str, int] = {}
        self._arrival_order: deque[tuple[int, str]] = deque()
        # Outcomes since the stream began, kept in checkpoints: exact across restarts, so
        # produced = accepted + rejected + duplicate + unclassified can be checked.
        self.totals: Counter[str] = Counter()
        # actions partition -> the next offset to apply: an action read again after a restart
        # (the group's commit lagging the checkpoint) is skipped, so each takes effect once
        self.action_offsets: dict[int, int] = {}
        self.checkpoint_seq = 0
        self.failures = 0  # records whose processing raised (see _failed)
        self._lateness_ms = params.allowed_lateness_ms
        # How far back a restart reads the input again: the longest window a report can still
        # be in (local windows; a surge's short window plus the minute being folded).
        surge_ms = params.surge.window_ms + 60_000 if params.surge.enabled else 0
        self._window_ms = max(params.max_window_ms, surge_ms)
        self.empty_partition_hold_ms = max(10_000, self._lateness_ms)

    # ------------------------------------------------------------------ reports

    def on_reports(
        self,
        partition: int,
        records: Iterable[tuple[int, bytes, int]],
        now_ms: int | None,
        silent: bool = False,
        halo: Container[int] = (),
        floors: Mapping[int, int] | None = None,
    ) -> Outputs:
        """A batch of (offset, value, timestamp_ms) from one partition, in offset order.

        `now_ms`: the wall clock, or None for a replay (no `future_timestamp` check, events
        keep their event-time `emitted_at`, nothing depends on when it runs).
        `silent`: records processed before a restart whose outputs were already produced;
        state and counts take them in, nothing is produced again.
        `halo`: the offsets of halo copies (scale-out: reports owned by a neighbouring region,
        see geo/regions.py). They are detected on like the others but counted as `halo`, and
        a halo copy that is rejected is its owner's to send to the DLQ.
        `floors`: offset -> the event time this partition had reached before that record
        (scale-out: what its router had routed from the source partition, to any region), so
        it is judged as an unsharded worker reading the source partition would judge it.
        A record whose processing raises is sent to the DLQ (`internal_error`) and the batch
        goes on: one bad record must not stop the stream (nor, restarted, stop it again).
        """
        out = Outputs()
        clock = self.partitions.setdefault(partition, PartitionClock())
        detector = self.detector
        observe = detector.observe
        taxonomy = self.params.taxonomy
        live = now_ms is not None
        horizon_ms = now_ms + self.future_tolerance_ms if live else 2**62  # type: ignore[operator]
        arrivals = self._arrivals
        arrival_order = self._arrival_order
        outcomes = out.outcomes
        last_offset = first_offset = None
        if live:
            clock.last_arrival_wall_ms = now_ms  # type: ignore[assignment]
        # Within one batch the other partitions' event time stands still (same wall clock), so
        # the watermark moves with this partition's max alone: raised per report (what is too
        # late must not depend on how the broker cut the batches), and the windows are
        # processed once, at the end of the batch.
        others = self._lowest_other(partition, now_ms)
        lateness_ms = self._lateness_ms
        max_ts_ms = clock.max_ts_ms
        for offset, value, timestamp_ms in records:
            if first_offset is None:
                first_offset = offset
            last_offset = offset
            try:
                if floors:
                    floor = floors.get(offset)
                    if floor is not None and (max_ts_ms is None or floor > max_ts_ms):
                        max_ts_ms = clock.max_ts_ms = floor
                        if others is not None:
                            lowest = floor if others > floor else others
                            detector.raise_watermark(lowest - lateness_ms)
                copy = bool(halo) and offset in halo
                parsed = parse_report(value, taxonomy)
                if type(parsed) is Rejection:
                    if not copy:
                        self._reject(out, value, parsed, partition, offset, now_ms)
                    continue
                report: Report = parsed  # type: ignore[assignment]
                if report.ts_ms > horizon_ms:
                    problem = future_problem(report, now_ms, self.future_tolerance_ms)  # type: ignore[arg-type]
                    if problem is not None:
                        if not copy:
                            self._reject(out, value, problem, partition, offset, now_ms)
                        continue
                if copy:
                    report.halo = True
                elif live and report.id not in arrivals:
                    # before observe: a late report is processed at once and can trigger an
                    # `opened` event right there
                    arrivals[report.id] = timestamp_ms
                    arrival_order.append((now_ms, report.id))  # type: ignore[arg-type]
                outcome, events = observe(report)
                if outcome is TOO_LATE:
                    if not copy:
                        self._reject(out, value, _TOO_LATE, partition, offset, now_ms)
                    continue
                outcomes[HALO if copy else outcome] += 1
                if events:
                    self._emit(out, events, now_ms)
                if outcome is ACCEPTED:
                    ts_ms = report.ts_ms
                    if max_ts_ms is None or ts_ms > max_ts_ms:
                        max_ts_ms = clock.max_ts_ms = ts_ms
                        if others is not None:
                            lowest = ts_ms if others > ts_ms else others
                            detector.raise_watermark(lowest - lateness_ms)
            except Exception as error:  # noqa: BLE001 - one record, not the stream
                self._failed(
                    out, value, error, partition, offset, now_ms, bool(halo) and offset in halo
                )
        if last_offset is None:
            return out
        clock.next_offset = last_offset + 1
        clock.started = True
        if clock.max_ts_ms is not None:
            clock.mark(first_offset, clock.max_ts_ms)  # type: ignore[arg-type]
        self._emit(out, detector.advance(self.watermark_ms(now_ms)), now_ms)
        if live:
            self._forget_arrivals(now_ms)  # type: ignore[arg-type]
        self.totals.update(out.outcomes)
        if silent:
            return Outputs(outcomes=out.outcomes, rejections=out.rejections)
        return out

    def flush(self, now_ms: int | None = None) -> Outputs:
        """End of input (a replay): event time moves to the latest report seen."""
        out = Outputs()
        self._emit(out, self.detector.flush(), now_ms)
        return out

    def _forget_arrivals(self, now_ms: int) -> None:
        """A report is processed (and may trigger an `opened` event) at the latest once the
        watermark passes it: about the lateness bound after it arrived, or after a held
        partition is given up. A minute after that, its arrival time goes."""
        horizon = now_ms - self._lateness_ms - self.empty_partition_hold_ms - 60_000
        order = self._arrival_order
        arrivals = self._arrivals
        while order and order[0][0] < horizon:
            arrivals.pop(order.popleft()[1], None)

    def _lowest_other(self, partition: int, now_ms: int | None) -> int | None:
        """The lowest event time of the partitions other than `partition` (idle advance
        included), or _NO_PARTITION when none counts; None while one of them holds event time
        back."""
        lowest = _NO_PARTITION
        for number, clock in self.partitions.items():
            if number == partition or not clock.assigned:
                continue
            if clock.max_ts_ms is None:
                # Assigned but nothing from it yet: hold event time for a while, or reading a
                # backlog would let the first partition's batch make the others "too late".
                # A partition still silent after the hold is empty or idle and is left out.
                # Without a wall clock (replay) it holds until the end of the input.
                if now_ms is None or (
                    now_ms - clock.last_arrival_wall_ms < self.empty_partition_hold_ms
                ):
                    return None
                continue
            seen = clock.max_ts_ms
            if self.idle_advance and now_ms is not None:
                seen += max(0, now_ms - clock.last_arrival_wall_ms)
            if seen < lowest:
                lowest = seen
        return lowest

    def _reject(
        self,
        out: Outputs,
        value: bytes,
        rejection: Rejection,
        partition: int,
        offset: int,
        now_ms: int | None,
    ) -> None:
        out.outcomes["rejected"] += 1
        out.rejections[rejection.reason] += 1
        out.dlq.append(
            self._dead_letter(
                value, rejection, self.topic, self.dlq_partition(partition), offset, now_ms
            )
        )

    def _dead_letter(
        self,
        value: bytes,
        rejection: Rejection,
        topic: str | None,
        partition: int | None,
        offset: int,
        now_ms: int | None,
    ) -> bytes:
        """The DLQ record of a refused report or action, naming where it was read."""
        at_topic, at_partition, at_offset = self._dlq_at(topic, partition, offset)
        record = dlq_record(
            value,
            rejection,
            topic=at_topic,
            partition=at_partition,
            offset=at_offset,
            received_at_ms=now_ms,
        )
        return orjson.dumps(record)

    def _dlq_at(
        self, topic: str | None, partition: int | None, offset: int
    ) -> tuple[str | None, int | None, int]:
        """Where a DLQ record says its record was read (scale-out: its source, not the routed
        topic)."""
        return topic, partition, offset

    def _failed(
        self,
        out: Outputs,
        value: bytes,
        error: Exception,
        partition: int,
        offset: int,
        now_ms: int | None,
        copy: bool = False,
    ) -> None:
        """A record whose processing raised: to the DLQ with the error (unless it is a halo
        copy: its owner answers for it), logged with its traceback (a defect to report), and
        the stream goes on."""
        rejection = self._failure(error, self.topic, partition, offset)
        if not copy:
            self._reject(out, value, rejection, partition, offset, now_ms)

    def _failure(
        self, error: Exception, topic: str | None, partition: int, offset: int
    ) -> Rejection:
        """Count and log (the first MAX_LOGGED_FAILURES, with the traceback) a record whose
        processing raised; its DLQ rejection."""
        self.failures += 1
        detail = f"{type(error).__name__}: {error}"
        if self.failures <= MAX_LOGGED_FAILURES:
            log.error(
                "event=record_failed topic=%s partition=%s offset=%s error=%r",
                topic,
                partition,
                offset,
                detail,
                exc_info=error,
            )
        return Rejection(INTERNAL_ERROR, detail[:500])

    def dlq_partition(self, partition: int) -> int | None:
        """The partition a DLQ record names: the input's, or none for a file (replay)."""
        return None if self.source_is_file else partition

    def _emit(self, out: Outputs, events: list[IncidentEvent], now_ms: int | None) -> None:
        owns = self.owns
        if owns is not None:
            events = [event for event in events if owns(event.incident_id)]
        if now_ms is None:
            out.incidents.extend(events)  # replay: event time only
            return
        stamp = format_ms(now_ms)
        for event in events:
            if event.event == "opened" and event.trigger_report_id is not None:
                arrived_ms = self._arrivals.get(event.trigger_report_id)
                if arrived_ms is not None:
                    out.latencies_s.append(max(0.0, (now_ms - arrived_ms) / 1000.0))
            # Live output stamps emission with the wall clock (contract §2); the rest of the
            # event is the detector's, identical to a replay of the same input.
            out.incidents.append(dataclasses.replace(event, emitted_at=stamp))

    # ------------------------------------------------------------------ time

    def watermark_ms(self, now_ms: int | None) -> int:
        """The slowest partition's event time, less the lateness bound.

        A partition that has gone quiet moves on by the wall time since its last report (like
        Flink's idle sources), so quiet incidents still resolve; it never jumps to the wall
        clock, so a backfill of last week's reports is judged like live ones.
        """
        lowest = self._lowest_other(_EVERY, now_ms)
        if lowest is None or lowest == _NO_PARTITION:
            return -(2**62)
        return lowest - self._lateness_ms

    def assigned(self, partitions: Iterable[int], now_ms: int) -> None:
        """The group's assignment is now exactly these partitions. Event time waits to hear
        from a new one; one taken away no longer counts for the watermark (with idle advance
        off it would hold it back for good) until it is given back."""
        mine = set(partitions)
        for partition, clock in self.partitions.items():
            clock.assigned = partition in mine
        for partition in mine:
            clock = self.partitions.get(partition)
            if clock is None:
                self.partitions[partition] = PartitionClock(last_arrival_wall_ms=now_ms)
            else:
                clock.last_arrival_wall_ms = max(clock.last_arrival_wall_ms, now_ms)

    def tick(self, now_ms: int) -> Outputs:
        """Called every second or so: idle partitions move event time on."""
        out = Outputs()
        if self.idle_advance and self.partitions:
            self._emit(out, self.detector.advance(self.watermark_ms(now_ms)), now_ms)
        return out

    def event_time_lag_s(self, now_ms: int) -> float | None:
        watermark = self.detector.watermark_ms
        if watermark is None or watermark < 0:
            return None
        return max(0.0, (now_ms - watermark) / 1000.0)

    # ------------------------------------------------------------------ actions

    def on_action(
        self, value: bytes, partition: int, offset: int, now_ms: int | None, silent: bool = False
    ) -> Outputs:
        """One record of the actions topic. An offset already applied (it is in the restored
        checkpoint) is skipped. `silent`: applied before a restart, its outputs produced then;
        the state takes it in, nothing is produced again."""
        out = Outputs()
        if offset < self.action_offsets.get(partition, 0):
            return out
        self.action_offsets[partition] = offset + 1
        try:
            action = parse_action(value)
            events = self.detector.apply_action(action)
            out.outcomes[f"action:{action.action}:applied"] += 1
        except ActionError as error:
            # the metric's outcomes: applied, unknown_incident, invalid
            outcome = "unknown_incident" if error.reason.startswith("unknown_") else "invalid"
            rejection = Rejection(error.reason, error.detail)
            self._refuse_action(out, value, rejection, outcome, partition, offset, now_ms)
            events = []
        except Exception as error:  # noqa: BLE001 - one action, not the stream
            rejection = self._failure(error, self.actions_topic, partition, offset)
            self._refuse_action(out, value, rejection, "invalid", partition, offset, now_ms)
            events = []
        if silent:
            return Outputs(outcomes=out.outcomes)
        self._emit(out, events, now_ms)
        return out

    def _refuse_action(
        self,
        out: Outputs,
        value: bytes,
        rejection: Rejection,
        outcome: str,
        partition: int,
        offset: int,
        now_ms: int | None,
    ) -> None:
        out.outcomes[f"action:{_action_name(value)}:{outcome}"] += 1
        out.action_dlq.append(
            self._dead_letter(value, rejection, self.actions_topic, partition, offset, now_ms)
        )

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        """Everything needed to resume: the detector's durable state and, per partition, the
        next offset to process and the first offset to read again to rebuild the windows."""
        detector = self.detector
        oldest_needed = None
        if detector.clock_ms is not None:
            oldest_needed = detector.clock_ms - self._window_ms - self._lateness_ms
        self.checkpoint_seq += 1
        return {
            "version": CHECKPOINT_VERSION,
            "seq": self.checkpoint_seq,
            "detector": detector.snapshot(),
            "totals": dict(self.totals),
            "actions": dict(self.action_offsets),
            "partitions": {
                partition: {
                    "next_offset": clock.next_offset,
                    "rebuild_offset": clock.rebuild_offset(oldest_needed),
                    "max_ts_ms": clock.max_ts_ms,
                    "marks": list(clock.marks),
                }
                for partition, clock in self.partitions.items()
                if clock.started
            },
        }

    def restore(self, checkpoint: dict, now_ms: int) -> None:
        if checkpoint.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {checkpoint.get('version')} is not supported")
        self.checkpoint_seq = checkpoint["seq"]
        self.totals = Counter(checkpoint["totals"])
        self.action_offsets = {int(p): int(o) for p, o in checkpoint.get("actions", {}).items()}
        self.detector.restore(checkpoint["detector"])
        for partition, saved in checkpoint["partitions"].items():
            clock = PartitionClock(
                max_ts_ms=saved["max_ts_ms"],
                last_arrival_wall_ms=now_ms,
                next_offset=saved["next_offset"],
                started=True,
            )
            clock.marks.extend(tuple(mark) for mark in saved["marks"])
            self.partitions[int(partition)] = clock

    def take_bursts(self) -> list[Burst]:
        """The new-reporter bursts declared since the last call (detectors/bursts.py)."""
        return self.detector.bursts.take()

    def stats(self) -> dict:
        detector = self.detector
        return {
            "totals": {
                k: self.totals.get(k, 0)
                for k in ("accepted", "rejected", "duplicate", "unclassified")
            },
            "watermark_ms": detector.watermark_ms,
            "state_reports": detector.state_reports,
            "open_incidents": len(detector.open_incidents()),
            "partitions": {
                p: {"next_offset": c.next_offset, "max_ts_ms": c.max_ts_ms}
                for p, c in sorted(self.partitions.items())
            },
        }

    def rebuild(self, values: Iterable[bytes]) -> int:
        """Refill the windows from values read again from the input; returns how many."""
        taxonomy = self.params.taxonomy
        reports = []
        for value in values:
            parsed = parse_report(value, taxonomy)
            if type(parsed) is not Rejection:
                reports.append(parsed)
        self.detector.rebuild(reports)  # type: ignore[arg-type]
        return len(reports)


def _action_name(value: bytes) -> str:
    try:
        name = orjson.loads(value).get("action")
    except (orjson.JSONDecodeError, AttributeError):
        return "invalid"
    return name if isinstance(name, str) else "invalid"


__all__ = ["DUPLICATE", "UNCLASSIFIED_OUTCOME", "Outputs", "WorkerCore"]
