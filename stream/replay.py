"""`geoincident replay`: the detector over a JSONL file, no broker, event time only.

The same detector core as the Kafka worker, so a replay of a topic dump gives the incidents
the worker emitted. Output is byte-identical across runs: no wall clock reaches it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import orjson

from geoincident.detectors.engine import (
    ACCEPTED,
    DUPLICATE,
    TOO_LATE,
    UNCLASSIFIED_OUTCOME,
    Detector,
)
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.report import Rejection, dlq_record, parse_report


@dataclass(slots=True)
class ReplaySummary:
    read: int = 0
    accepted: int = 0
    duplicate: int = 0
    unclassified: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    incidents: Counter[str] = field(default_factory=Counter)

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


# A replay raises the watermark with every report and processes the windows every this many
# lines: the same events in the same order as processing at every report, with fewer calls.
DRAIN_EVERY = 1024


def replay(
    lines: Iterable[bytes],
    detector: Detector,
    on_event: Callable[[IncidentEvent], None],
    on_reject: Callable[[bytes, Rejection, int], None],
    progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """Feed every line to the detector; events and rejections go to the callbacks."""
    summary = ReplaySummary()
    taxonomy = detector.params.taxonomy
    observe = detector.observe
    incidents = summary.incidents

    def emit(events: list[IncidentEvent]) -> None:
        for event in events:
            incidents[event.event] += 1
            on_event(event)

    deferred = detector.defer_drain
    detector.defer_drain = True
    position = -1
    try:
        for position, raw in enumerate(lines):
            parsed = parse_report(raw, taxonomy)
            if type(parsed) is Rejection:
                summary.rejected[parsed.reason] += 1
                on_reject(raw, parsed, position)
                continue
            events = observe(parsed)  # type: ignore[arg-type]
            if detector.last_outcome is TOO_LATE:
                rejection = Rejection(TOO_LATE, "older than the watermark minus the window")
                summary.rejected[TOO_LATE] += 1
                on_reject(raw, rejection, position)
            if events:
                emit(events)
            if position % DRAIN_EVERY == 0:
                emit(detector.drain())
                if progress is not None and position % 65536 == 0:
                    progress(position)
    finally:
        detector.defer_drain = deferred
    emit(detector.flush())
    counts = detector.counts
    summary.read = position + 1
    summary.accepted = counts[ACCEPTED]
    summary.duplicate = counts[DUPLICATE]
    summary.unclassified = counts[UNCLASSIFIED_OUTCOME]
    return summary


def replay_files(
    input_stream: BinaryIO,
    output: BinaryIO,
    dlq: BinaryIO,
    detector: Detector,
    source_name: str,
    progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """File to file: incidents JSONL to `output`, DLQ records JSONL to `dlq`."""
    write_event = output.write
    write_dlq = dlq.write

    def on_event(event: IncidentEvent) -> None:
        write_event(event.to_json() + b"\n")

    def on_reject(raw: bytes, rejection: Rejection, position: int) -> None:
        # Replays stay byte-identical: the line number stands for the offset, no wall clock.
        record = dlq_record(
            raw, rejection, topic=source_name, partition=None, offset=position, received_at_ms=None
        )
        write_dlq(orjson.dumps(record) + b"\n")

    return replay(read_lines(input_stream), detector, on_event, on_reject, progress)
