"""Small builders shared by the tests: reports at known places and times."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from geoincident.detectors import DetectorParams, Report
from geoincident.detectors.events import IncidentEvent
from geoincident.geo import destination
from geoincident.stream.replay import replay_core
from geoincident.stream.runtime import Outputs

T0_MS = int(datetime(2026, 11, 24, 9, 0, tzinfo=UTC).timestamp() * 1000)
MINUTE_MS = 60_000
SPOT = (47.6062, -122.3321)


def report(
    report_id: str,
    minute: float,
    lat: float = SPOT[0],
    lon: float = SPOT[1],
    reporter: str | None = None,
    category: str = "streetlight_out",
    **fields,
) -> Report:
    return Report(
        id=report_id,
        ts_ms=T0_MS + int(minute * MINUTE_MS),
        lat=lat,
        lon=lon,
        reporter=reporter or f"user-{report_id}",
        category=category,
        **fields,
    )


def ring(
    count: int,
    distance_m: float,
    centre: tuple[float, float] = SPOT,
    start_minute: float = 0.0,
    step_minutes: float = 1.0,
    prefix: str = "r",
    category: str = "streetlight_out",
    **fields,
) -> list[Report]:
    """`count` reports from `count` different reporters on a circle around `centre`."""
    reports = []
    for n in range(count):
        lat, lon = destination(centre[0], centre[1], 360.0 * n / count, distance_m)
        reports.append(
            report(
                f"{prefix}{n}",
                start_minute + n * step_minutes,
                lat,
                lon,
                reporter=f"{prefix}-user{n}",
                category=category,
                **fields,
            )
        )
    return reports


def line(r: Report) -> bytes:
    """A report as the wire JSON a producer would send (ts as epoch ms)."""
    body = {
        "id": r.id,
        "ts": r.ts_ms,
        "lat": r.lat,
        "lon": r.lon,
        "reporter": r.reporter,
        "category": r.category,
        "source": r.source,
        "device": r.device,
        "accuracy_m": r.accuracy_m,
        "lang": r.lang,
    }
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


class Driven:
    """The detector as replay and the worker drive it (stream/runtime.py's core, one
    partition, no wall clock), fed with built reports: no test drives it its own way."""

    def __init__(self, params: DetectorParams | None = None, partition: int = 0) -> None:
        self.core = replay_core(params or DetectorParams(), "reports")
        self.detector = self.core.detector
        self.partition = partition
        self.last: Outputs = Outputs()

    def feed(self, reports: list[Report], partition: int | None = None) -> list[IncidentEvent]:
        """One batch, in the given order; returns the incident events it produced."""
        partition = self.partition if partition is None else partition
        clock = self.core.partitions.get(partition)
        start = clock.next_offset if clock is not None else 0
        records = [(start + n, line(r), r.ts_ms) for n, r in enumerate(reports)]
        self.last = self.core.on_reports(partition, records, None)
        return self.last.incidents

    def flush(self) -> list[IncidentEvent]:
        return self.core.flush().incidents

    def restart(self, reread: list[Report]) -> Driven:
        """A new process: restored from this one's checkpoint (through its bytes, as stored),
        its windows rebuilt from `reread`, the reports a worker reads again from the input."""
        from geoincident.stream.checkpoint import decode, encode

        checkpoint = decode(encode(self.core.checkpoint()))
        restarted = Driven(self.core.params, self.partition)
        restarted.core.restore(checkpoint, 0)
        restarted.core.rebuild(line(r) for r in reread)
        return restarted


def run(reports: list[Report], params: DetectorParams | None = None) -> list[IncidentEvent]:
    driven = Driven(params)
    return driven.feed(reports) + driven.flush()


def opened(events: list[IncidentEvent]) -> list[IncidentEvent]:
    return [event for event in events if event.event == "opened"]


def wire(**fields) -> bytes:
    body = {
        "id": "r-1",
        "ts": "2026-11-24T09:00:00.000Z",
        "lat": SPOT[0],
        "lon": SPOT[1],
        "reporter": "u1",
        "tags": ["#lightout"],
    }
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})
