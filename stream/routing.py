"""Scale-out: reports re-keyed by region, one detector per partition of the routed topic.

A geo cluster does not respect the partitions producers chose (reports keyed by reporter
never meet), so with `[scale]` set the worker runs two stages in one consumer group:

1. **route** (`Router`): each report of the `reports` topic is validated (a bad one goes to
   the DLQ here, once) and written to the routed topic's partition of the region that owns its
   location, plus, within `halo_m` of another region, to that region's partition as a *halo*
   copy (geo/regions.py). Each action is written to every partition: the incident's copies
   near a border (built from halo reports) change with it, and the owner alone answers it.
2. **detect** (`RegionCore`): one detector per routed partition. It emits only the incidents
   and surges its partition owns: their ids carry the owning region (`inc-<region>-<hash>`).

A routed record is the original bytes behind a 4-byte header: kind (report or action),
flags (owner copy or not), and the partition of `reports` it came from. That partition is the
routed record's *channel*: event time is tracked per channel, like the partitions of an
unsharded worker, so the watermark is the slowest source partition's and a router that fell
behind (a restart, a backlog) holds the watermark back rather than making its reports late.

`geoincident replay` with `[scale]` set runs the same stages in one process (one channel: the
file), so the workers and a replay of their input agree, whatever the number of processes.
"""

from __future__ import annotations

import heapq
import logging
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import orjson

from geoincident.detectors.actions import ActionError, parse_action
from geoincident.detectors.bursts import Burst
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.lifecycle import shard_of_id
from geoincident.detectors.params import DetectorParams
from geoincident.detectors.report import Rejection, Report, dlq_record, parse_report
from geoincident.detectors.taxonomy import UNCLASSIFIED
from geoincident.geo.regions import RegionMap
from geoincident.stream.runtime import (
    _NO_PARTITION,
    Outputs,
    PartitionClock,
    WorkerCore,
    _action_name,
)

log = logging.getLogger("geoincident.worker")

REPORT = 1
ACTION = 2
# A router's word on one source partition, to every routed partition about once a second:
# the latest event time it routed from there (-1: none yet) and how long the partition has
# been quiet. Event time of a channel moves on only through its router's records and marks:
# a channel whose router is down holds the watermark (its reports will come), where a silent
# partition of an unsharded worker would be taken for an idle one.
MARK = 3
_MARK = struct.Struct(">qq")
OWNER = 1  # flag: the copy its partition owns (a report's owner region; an action's answerer)
# magic, kind, flags, channel, floor, origin (the record's offset in its source partition, for
# the DLQ records that name it); a report's floor is the latest event time its router had
# routed from its source partition before it (-1: none), so that the routed partition judges
# it against the same event time as an unsharded worker reading that partition would,
# whatever went to other regions in between
_MAGIC = 0x67
_HEADER = struct.Struct(">BBBHqq")
HEADER_SIZE = _HEADER.size
_KINDS = (REPORT, ACTION, MARK)


def envelope(
    kind: int, owner: bool, channel: int, value: bytes, floor: int = -1, origin: int = -1
) -> bytes:
    return _HEADER.pack(_MAGIC, kind, OWNER if owner else 0, channel, floor, origin) + value


def open_routed(value: bytes | None) -> tuple[int, bool, int, int, int, bytes]:
    """(kind, owner copy, channel, floor, origin, original bytes); kind 0 for a value that is
    not a routed record (a null value included)."""
    if value is None or len(value) < HEADER_SIZE:
        return 0, False, 0, -1, -1, value or b""
    magic, kind, flags, channel, floor, origin = _HEADER.unpack_from(value)
    if magic != _MAGIC or kind not in _KINDS:
        return 0, False, 0, -1, -1, value
    return kind, bool(flags & OWNER), channel, floor, origin, value[HEADER_SIZE:]


def open_envelope(value: bytes) -> tuple[int, bool, int, bytes]:
    """(kind, owner copy, channel, original bytes); kind 0 for a value that is not one."""
    kind, owner, channel, _, _, payload = open_routed(value)
    return kind, owner, channel, payload


def halo_m_for(params: DetectorParams) -> float:
    """How far past its border a region's detector must see: a group straddling the border
    spans twice the largest radius, and the background around a group's centre reaches
    1.5 x the neighbourhood (5 x 5 boxes half its width, the centre anywhere in its box)."""
    return 2.0 * params.max_radius_m + 1.5 * params.significance.neighbourhood_m


@dataclass(slots=True)
class Routed:
    """What routing one batch asks the shell to produce."""

    # (routed partition, routed value, the record's timestamp ms, its offset in the source)
    records: list[tuple[int, bytes, int, int]] = field(default_factory=list)
    dlq: list[bytes] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)
    halo_copies: int = 0
    # the latest event time routed from the source partition, this batch included
    max_ts_ms: int | None = None


class Router:
    """Stage 1: validate, find the owning region (and the halo's), wrap, pick partitions."""

    def __init__(
        self,
        params: DetectorParams,
        regions: RegionMap,
        topic: str,
        actions_topic: str,
        future_tolerance_s: float = 300.0,
    ) -> None:
        self.params = params
        self.regions = regions
        self.topic = topic
        self.actions_topic = actions_topic
        self.future_tolerance_ms = int(future_tolerance_s * 1000)
        # source partition -> (latest event time routed or None, wall time of its last batch)
        self.sources: dict[int, tuple[int | None, int]] = {}

    def marks(self, partitions: Iterable[int], now_ms: int) -> list[tuple[int, bytes]]:
        """The marks of these source partitions (those this process routes), for every routed
        partition: (routed partition, value)."""
        values = []
        for source in partitions:
            max_ts_ms, last_wall_ms = self.sources.setdefault(source, (None, now_ms))
            payload = _MARK.pack(
                -1 if max_ts_ms is None else max_ts_ms, max(0, now_ms - last_wall_ms)
            )
            value = envelope(MARK, False, source, payload)
            values.extend((target, value) for target in range(self.regions.partitions))
        return values

    def route_reports(
        self,
        partition: int,
        records: Iterable[tuple[int, bytes, int]],
        now_ms: int | None,
        dlq_partition: int | None | Literal["source"] = "source",
    ) -> Routed:
        """A batch of (offset, value, timestamp_ms) of `reports` partition `partition`.
        `dlq_partition`: what DLQ records name (the source partition; None for a file)."""
        routed = Routed()
        out = routed.records
        taxonomy = self.params.taxonomy
        targets = self.regions.targets
        max_ts_ms = self.sources.get(partition, (None, 0))[0]
        horizon_ms = 2**62 if now_ms is None else now_ms + self.future_tolerance_ms
        for offset, value, timestamp_ms in records:
            parsed = parse_report(value, taxonomy)
            if type(parsed) is Rejection:
                routed.rejections[parsed.reason] += 1
                record = dlq_record(
                    value,
                    parsed,
                    topic=self.topic,
                    partition=partition if dlq_partition == "source" else dlq_partition,
                    offset=offset,
                    received_at_ms=now_ms,
                )
                routed.dlq.append(orjson.dumps(record))
                continue
            report: Report = parsed  # type: ignore[assignment]
            floor = -1 if max_ts_ms is None else max_ts_ms
            owner, others = targets(report.lat, report.lon)
            own = envelope(REPORT, True, partition, value, floor, offset)
            out.append((owner, own, timestamp_ms, offset))
            for other in others:
                copy = envelope(REPORT, False, partition, value, floor, offset)
                out.append((other, copy, timestamp_ms, offset))
            routed.halo_copies += len(others)
            # what moves an unsharded partition's event time: a report its detector accepts
            # (one from the future or of no category is refused there; a too-late or repeated
            # one is older than what was routed already)
            ts_ms = report.ts_ms
            if (
                (max_ts_ms is None or ts_ms > max_ts_ms)
                and ts_ms <= horizon_ms
                and report.category != UNCLASSIFIED
            ):
                max_ts_ms = ts_ms
        routed.max_ts_ms = max_ts_ms
        return routed

    def routed(self, partition: int, routed: Routed, now_ms: int) -> None:
        """A batch's copies are on their way (queued, in order, behind the earlier ones): the
        marks of its source partition may now say so. Not before: a mark must not overtake
        the reports it vouches for."""
        self.sources[partition] = (routed.max_ts_ms, now_ms)

    def route_action(
        self, value: bytes, partition: int, offset: int, now_ms: int | None
    ) -> tuple[list[tuple[int, bytes]], Outputs]:
        """One action: to every routed partition (the owner's copy flagged), or to the DLQ."""
        out = Outputs()
        try:
            action = parse_action(value)
        except ActionError as error:
            out.outcomes[f"action:{_action_name(value)}:invalid"] += 1
            record = dlq_record(
                value,
                Rejection(error.reason, error.detail),
                topic=self.actions_topic,
                partition=partition,
                offset=offset,
                received_at_ms=now_ms,
            )
            out.action_dlq.append(orjson.dumps(record))
            return [], out
        shard = shard_of_id(action.incident_id) if action.incident_id else None
        regions = self.regions
        answerer = regions.partition_of(shard) if shard is not None else 0
        copies = [
            (p, envelope(ACTION, p == answerer, partition, value, -1, offset))
            for p in range(regions.partitions)
        ]
        return copies, out


class RegionCore(WorkerCore):
    """Stage 2: the detector of one routed partition. Records are routed values; event time is
    tracked per channel (the `reports` partition a report came from)."""

    def __init__(
        self,
        params: DetectorParams,
        regions: RegionMap,
        partition: int,
        topic: str,
        *,
        channels: Iterable[int] = (),
        now_ms: int | None = None,
        future_tolerance_s: float = 300.0,
        idle_advance: bool = True,
        source_topic: str = "reports",
        source_actions_topic: str = "incident-actions",
    ) -> None:
        super().__init__(
            params,
            topic,
            future_tolerance_s=future_tolerance_s,
            idle_advance=idle_advance,
            actions_topic=topic,
            owns=self._owns,
        )
        self.regions = regions
        self.partition = partition
        # DLQ records name where a record came from: its source topic, partition and offset
        self.source_topic = source_topic
        self.source_actions_topic = source_actions_topic
        self._origins: dict[int, tuple[str | None, int | None, int]] = {}
        self._owned: dict[str, bool] = {}
        self._start = 0
        self._marked_to = 0  # past the last mark processed (marks are not in the checkpoint)
        # per source actions partition, the next source offset to apply: a router routes an
        # action again after a crash, and the copy is skipped
        self.source_actions: dict[int, int] = {}
        # per channel, from its router's marks: how long its source partition has been quiet
        # (the idle advance), and whether it has had nothing at all yet (it does not count)
        self._idle: dict[int, int] = {}
        self._empty: set[int] = set()
        if now_ms is not None:
            # the source partitions are known: one silent so far holds event time for a while,
            # as an assigned partition does for an unsharded worker
            self.assigned(channels, now_ms)

    def _owns(self, incident_id: str) -> bool:
        shard = shard_of_id(incident_id)
        if shard is None:
            return True
        owned = self._owned.get(shard)
        if owned is None:
            owned = self._owned[shard] = self.regions.partition_of(shard) == self.partition
        return owned

    def dlq_partition(self, partition: int) -> int | None:
        # a record without its origin: where it was read, this routed partition (a replay:
        # the file, no partition)
        return None if self.source_is_file else self.partition

    def _dlq_at(
        self, topic: str | None, partition: int | None, offset: int
    ) -> tuple[str | None, int | None, int]:
        found = self._origins.get(offset)
        return found if found is not None else (topic, partition, offset)

    @property
    def position(self) -> int:
        """The next routed offset to process: every record before it was processed."""
        position = max(self._start, self._marked_to, self.action_offsets.get(self.partition, 0))
        for clock in self.partitions.values():
            if clock.started and clock.next_offset > position:
                position = clock.next_offset
        return position

    def start_at(self, offset: int) -> None:
        """Nothing processed yet: processing starts at `offset` (the group's commit)."""
        self._start = offset

    def checkpoint(self) -> dict:
        saved = super().checkpoint()
        saved["source_actions"] = dict(self.source_actions)
        return saved

    def restore(self, checkpoint: dict, now_ms: int) -> None:
        super().restore(checkpoint, now_ms)
        self.source_actions = {
            int(p): int(o) for p, o in checkpoint.get("source_actions", {}).items()
        }

    def rebuild_offset(self, checkpoint: dict) -> int:
        """Where to read the routed partition again from to refill the windows."""
        starts = [saved["rebuild_offset"] for saved in checkpoint["partitions"].values()]
        return min(starts) if starts else self.position

    def on_routed(
        self, records: Iterable[tuple[int, bytes, int]], now_ms: int | None, silent: bool = False
    ) -> Outputs:
        """A batch of (offset, routed value, timestamp_ms) of this routed partition. Runs of
        reports from one channel go to the core as that channel's batch; an action is applied
        where it stands between them."""
        out = Outputs()
        run: list[tuple[int, bytes, int]] = []
        halo: set[int] = set()
        floors: dict[int, int] = {}
        channel = -1
        origins = self._origins
        origins.clear()
        file = self.source_is_file
        for offset, value, timestamp_ms in records:
            kind, owner, source, floor, origin, payload = open_routed(value)
            if kind == REPORT:
                if origin >= 0:
                    origins[offset] = (self.source_topic, None if file else source, origin)
                if source != channel and run:
                    out.extend(self.on_reports(channel, run, now_ms, silent, halo, floors))
                    run, halo, floors = [], set(), {}
                channel = source
                self._idle[source] = 0
                run.append((offset, payload, timestamp_ms))
                if not owner:
                    halo.add(offset)
                if floor >= 0:
                    floors[offset] = floor
                continue
            if run:
                out.extend(self.on_reports(channel, run, now_ms, silent, halo, floors))
                run, halo, floors = [], set(), {}
            if kind == ACTION:
                if origin >= 0:
                    origins[offset] = (self.source_actions_topic, source, origin)
                out.extend(self._action(payload, offset, now_ms, silent, owner, source, origin))
            elif kind == MARK:
                self._marked_to = offset + 1
                marked = self._mark(source, payload, offset, now_ms)
                if not silent:
                    out.extend(marked)
            else:
                log.warning(
                    "event=routed_record_skipped partition=%s offset=%s detail=%s",
                    self.partition,
                    offset,
                    "not a routed record (written by something else?)",
                )
        if run:
            out.extend(self.on_reports(channel, run, now_ms, silent, halo, floors))
        return out

    def _mark(self, channel: int, payload: bytes, offset: int, now_ms: int | None) -> Outputs:
        """A router's mark: the channel's event time moves to what was routed from its
        source partition (to any region), its idle advance to how long that has been quiet."""
        if len(payload) != _MARK.size:
            log.warning(
                "event=routed_record_skipped partition=%s offset=%s detail=%s",
                self.partition,
                offset,
                "a mark of the wrong size",
            )
            return Outputs()
        max_ts_ms, idle_ms = _MARK.unpack(payload)
        clock = self.partitions.setdefault(channel, PartitionClock())
        clock.next_offset = max(clock.next_offset, offset + 1)
        clock.started = True
        if max_ts_ms < 0:
            if clock.max_ts_ms is None:
                self._empty.add(channel)
        else:
            self._empty.discard(channel)
            if clock.max_ts_ms is None or max_ts_ms > clock.max_ts_ms:
                clock.max_ts_ms = max_ts_ms
        self._idle[channel] = idle_ms
        out = Outputs()
        self._emit(out, self.detector.advance(self.watermark_ms(now_ms)), now_ms)
        return out

    def _lowest_other(self, partition: int, now_ms: int | None) -> int | None:
        """As for partitions (WorkerCore), but for channels: one with nothing yet holds event
        time until its router says its source is empty; the idle advance is its router's."""
        lowest = _NO_PARTITION
        idle_advance = self.idle_advance and now_ms is not None
        for number, clock in self.partitions.items():
            if number == partition:
                continue
            if clock.max_ts_ms is None:
                if number in self._empty:
                    continue
                return None
            seen = clock.max_ts_ms
            if idle_advance:
                seen += self._idle.get(number, 0)
            if seen < lowest:
                lowest = seen
        return lowest

    def _action(
        self,
        value: bytes,
        offset: int,
        now_ms: int | None,
        silent: bool,
        owner: bool,
        source: int,
        origin: int,
    ) -> Outputs:
        if origin >= 0:
            if origin < self.source_actions.get(source, 0):
                # routed again (its router restarted before committing it): applied already
                self.action_offsets[self.partition] = offset + 1
                return Outputs()
            self.source_actions[source] = origin + 1
        out = self.on_action(value, self.partition, offset, now_ms, silent)
        if owner:
            return out
        # a copy: its effect on this detector's copy of the incident is all; the owner answers
        out.action_dlq.clear()
        out.outcomes.clear()
        return out

    def rebuild_routed(self, values: Iterable[bytes]) -> int:
        """Refill the windows from routed values read again; returns how many reports."""
        taxonomy = self.params.taxonomy
        reports = []
        for value in values:
            kind, owner, _, _, _, payload = open_routed(value)
            if kind != REPORT:
                continue
            parsed = parse_report(payload, taxonomy)
            if type(parsed) is Rejection:
                continue
            report: Report = parsed  # type: ignore[assignment]
            report.halo = not owner
            reports.append(report)
        self.detector.rebuild(reports)
        return len(reports)


class RoutedCores:
    """Both stages in one process, over one source partition: what `geoincident replay` runs
    with `[scale]` set (and the tests), so that a replay gives the workers' incidents.

    Each routed partition's events come out in their own order; across partitions they are
    merged by `emitted_at` (event time in a replay) once the input has ended, and the DLQ
    records by line, so the output does not depend on how the input was cut into batches."""

    def __init__(self, params: DetectorParams, regions: RegionMap, source_name: str) -> None:
        self.router = Router(params, regions, source_name, "incident-actions")
        self.cores = [
            RegionCore(params, regions, p, source_name, source_topic=source_name)
            for p in range(regions.partitions)
        ]
        for core in self.cores:
            core.source_is_file = True
        self.totals: Counter[str] = Counter()
        self._events: list[list[IncidentEvent]] = [[] for _ in self.cores]
        self._dlq: list[tuple[int, bytes]] = []

    def on_reports(
        self, partition: int, records: list[tuple[int, bytes, int]], now_ms: int | None
    ) -> Outputs:
        """Route and detect a batch; its events and DLQ records wait for `flush`."""
        routed = self.router.route_reports(partition, records, now_ms, dlq_partition=None)
        out = Outputs(rejections=routed.rejections)
        out.outcomes["rejected"] += len(routed.dlq)
        self._dlq.extend(zip((_dlq_offset(r) for r in routed.dlq), routed.dlq, strict=True))
        by_partition: list[list[tuple[int, bytes, int]]] = [[] for _ in self.cores]
        # a copy's offset in its routed partition: the record's in the source (a line number
        # for a file), the same in every partition it is copied to
        for target, value, timestamp_ms, offset in routed.records:
            by_partition[target].append((offset, value, timestamp_ms))
        if records:
            # what the worker's routers say every second: where the source stands
            last = records[-1][0]
            max_ts_ms = -1 if routed.max_ts_ms is None else routed.max_ts_ms
            mark = envelope(MARK, False, partition, _MARK.pack(max_ts_ms, 0))
            for batch in by_partition:
                batch.append((last, mark, 0))
        for index, (core, batch) in enumerate(zip(self.cores, by_partition, strict=True)):
            self._take(index, core.on_routed(batch, now_ms), out)
        self.totals.update(out.outcomes)
        return out

    def take_bursts(self) -> list[Burst]:
        return [burst for core in self.cores for burst in core.take_bursts()]

    def _take(self, index: int, core_out: Outputs, out: Outputs) -> None:
        self._events[index].extend(core_out.incidents)
        self._dlq.extend((_dlq_offset(r), r) for r in core_out.dlq)
        out.outcomes.update(core_out.outcomes)
        out.rejections.update(core_out.rejections)

    def flush(self, now_ms: int | None = None) -> Outputs:
        """End of input: event time moves to the latest report seen in any partition (as
        one detector's would; the quiet resolutions due by then happen everywhere); then
        every event and DLQ record, merged."""
        out = Outputs()
        seen = [c.detector.max_ts_ms for c in self.cores if c.detector.max_ts_ms is not None]
        for index, core in enumerate(self.cores):
            if seen:
                core.detector.raise_watermark(max(seen))
            self._take(index, core.flush(now_ms), out)
        out.incidents = list(heapq.merge(*self._events, key=lambda e: e.emitted_at))
        self._dlq.sort(key=lambda item: item[0])
        out.dlq = [record for _, record in self._dlq]
        self._events = [[] for _ in self.cores]
        self._dlq = []
        return out


def _dlq_offset(record: bytes) -> int:
    offset = orjson.loads(record).get("offset")
    return offset if isinstance(offset, int) else -1


def region_map(
    params: DetectorParams, resolution: int, partitions: int, halo_m: float | None = None
) -> RegionMap:
    """The RegionMap a `[scale]` section describes."""
    return RegionMap(
        resolution=resolution,
        cell_resolution=params.surge.region_resolution,
        halo_m=halo_m_for(params) if halo_m is None else halo_m,
        partitions=partitions,
    )


__all__ = [
    "ACTION",
    "REPORT",
    "RegionCore",
    "Routed",
    "Router",
    "envelope",
    "halo_m_for",
    "open_envelope",
    "region_map",
]
