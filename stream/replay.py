"""`geoincident replay`: the worker's core over a JSONL file, no broker, event time only.

The worker's own core (stream/runtime.py) with one partition and no wall clock, so a replay
of a topic dump gives the incidents the worker emitted. Output is byte-identical across runs:
no wall clock reaches it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import BinaryIO

from geoincident.detectors.bursts import Burst
from geoincident.detectors.engine import ACCEPTED, DUPLICATE, UNCLASSIFIED_OUTCOME
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.params import DetectorParams
from geoincident.geo.regions import RegionMap
from geoincident.stream.routing import RoutedCores
from geoincident.stream.runtime import Outputs, WorkerCore


@dataclass(slots=True)
class ReplaySummary:
    read: int = 0
    accepted: int = 0
    duplicate: int = 0
    unclassified: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    incidents: Counter[str] = field(default_factory=Counter)
    # new-reporter bursts (detectors/bursts.py), in the order they were declared
    bursts: list[Burst] = field(default_factory=list)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected_total,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "duplicate": self.duplicate,
            "unclassified": self.unclassified,
            "incidents": {
                name: self.incidents.get(name, 0) for name in ("opened", "updated", "resolved")
            },
            "new_reporter_bursts": [burst.log_fields() for burst in self.bursts],
        }


def read_lines(stream: BinaryIO) -> Iterator[bytes]:
    """JSONL lines without their line ending; a blank line is a (bad) record, the final
    newline is not."""
    for line in stream:
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield line


# Lines go to the core in batches of this many: a batch is the unit after which the windows
# are processed, and any batch cut gives the same events in the same order.
BATCH_LINES = 1024


def replay(
    lines: Iterable[bytes],
    core: WorkerCore | RoutedCores,
    on_event: Callable[[IncidentEvent], None],
    on_reject: Callable[[bytes], None],
    progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """Feed every line to the core as one partition with no wall clock; events and DLQ
    records (JSON bytes, the line number standing for the offset) go to the callbacks."""
    summary = ReplaySummary()
    incidents = summary.incidents

    def deliver(out: Outputs) -> None:
        for event in out.incidents:
            incidents[event.event] += 1
            on_event(event)
        for record in out.dlq:
            on_reject(record)
        summary.rejected.update(out.rejections)
        summary.bursts.extend(core.take_bursts())

    read = 0
    lines = iter(lines)
    while batch := list(islice(lines, BATCH_LINES)):
        deliver(core.on_reports(0, [(read + n, raw, 0) for n, raw in enumerate(batch)], None))
        read += len(batch)
        if progress is not None and read % 65536 < BATCH_LINES:
            progress(read)
    deliver(core.flush())
    totals = core.totals
    summary.read = read
    summary.accepted = totals[ACCEPTED]
    summary.duplicate = totals[DUPLICATE]
    summary.unclassified = totals[UNCLASSIFIED_OUTCOME]
    return summary


def replay_core(
    params: DetectorParams, source_name: str, regions: RegionMap | None = None
) -> WorkerCore | RoutedCores:
    """The worker's core as a replay runs it: one partition, a file for a source; with
    `regions` (`[scale]`), both stages of a scaled-out worker (stream/routing.py)."""
    if regions is not None:
        return RoutedCores(params, regions, source_name)
    return WorkerCore(params, source_name, source_is_file=True)


def replay_files(
    input_stream: BinaryIO,
    output: BinaryIO,
    dlq: BinaryIO,
    params: DetectorParams,
    source_name: str,
    progress: Callable[[int], None] | None = None,
    regions: RegionMap | None = None,
) -> ReplaySummary:
    """File to file: incidents JSONL to `output`, DLQ records JSONL to `dlq`."""
    write_event = output.write
    write_dlq = dlq.write

    def on_event(event: IncidentEvent) -> None:
        write_event(event.to_json() + b"\n")

    def on_reject(record: bytes) -> None:
        write_dlq(record + b"\n")

    core = replay_core(params, source_name, regions)
    return replay(read_lines(input_stream), core, on_event, on_reject, progress)
