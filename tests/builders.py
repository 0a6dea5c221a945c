"""Small builders shared by the tests: reports at known places and times."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from geoincident.detectors import Detector, DetectorParams, Report
from geoincident.detectors.events import IncidentEvent
from geoincident.geo import destination

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


def run(reports: list[Report], params: DetectorParams | None = None) -> list[IncidentEvent]:
    detector = Detector(params or DetectorParams())
    events = detector.observe_many(reports)
    events.extend(detector.flush())
    return events


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
