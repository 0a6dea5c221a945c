"""One surge per outbreak (docs/design.md, "Surge detection"): a district reporting one failure
is one surge whatever H3 regions it touches, and local incidents inside it point at it."""

import math
import random

import h3

from geoincident.geo import destination, haversine_m
from tests.builders import MINUTE_MS, SPOT, T0_MS, Driven, report

CATEGORY = "power_outage"


def _vertex_near_spot() -> tuple[float, float]:
    """A point where three resolution-6 regions meet: a district around it touches all three."""
    cell = h3.latlng_to_cell(*SPOT, 6)
    return h3.cell_to_boundary(cell)[0]


def _disk(rng, centre, radius_m):
    return destination(*centre, rng.uniform(0, 360), radius_m * math.sqrt(rng.random()))


def _stream(seed: int = 1):
    rng = random.Random(seed)
    district = _vertex_near_spot()
    reports = []
    # a normal city: every category at ~0.03 per km² per minute over a 12 km disk, for 3 hours
    categories = ["power_outage", "streetlight_out", "pothole", "road_flooding"]
    minute = 0.0
    rate_per_min = 0.03 * math.pi * 12.0**2 * len(categories)
    while minute < 180:
        minute += rng.expovariate(rate_per_min)
        lat, lon = _disk(rng, district, 12_000.0)
        category = categories[rng.randrange(len(categories))]
        reports.append(report(f"bg{len(reports)}", minute, lat, lon, category=category))
    # 5,000 complaints from one 2.5 km district within 10 minutes, two hours in
    for n in range(5000):
        lat, lon = _disk(rng, district, 2500.0)
        at = 120 + rng.uniform(0, 10)
        reports.append(report(f"out{n}", at, lat, lon, category=CATEGORY, reporter=f"home{n}"))
    return district, reports


def test_an_outbreak_over_three_regions_is_one_surge_and_its_local_incidents_point_at_it():
    district, reports = _stream()
    regions = {h3.latlng_to_cell(r.lat, r.lon, 6) for r in reports if r.id.startswith("out")}
    assert len(regions) == 3
    detector = Driven()
    events = detector.feed(sorted(reports, key=lambda r: (r.ts_ms, r.id)))
    events += detector.flush()
    surges = [e for e in events if e.kind == "surge" and e.event == "opened"]
    assert len(surges) == 1
    surge_id = surges[0].incident_id
    last = [e for e in events if e.incident_id == surge_id][-1]
    assert set(last.cells) == regions  # the surge's area is the union of the three regions
    assert last.geometry["type"] == "Polygon"
    start_ms, end_ms = T0_MS + 120 * MINUTE_MS, T0_MS + 130 * MINUTE_MS
    inside = [
        e
        for e in events
        if e.kind == "local"
        and e.event == "opened"
        and e.category == CATEGORY
        and haversine_m(e.lat, e.lon, *district) <= 2500.0
        and e.validated_at >= _rfc(start_ms)
        and e.validated_at <= _rfc(end_ms)
    ]
    linked = [e for e in inside if e.surge_id == surge_id]
    assert len(inside) >= 10  # the outbreak does open local incidents; they must point at it
    assert len(linked) >= 0.95 * len(inside)
    # outside the surge's category or area, local incidents carry no surge
    for event in events:
        if event.kind == "local" and event.category != CATEGORY:
            assert event.surge_id is None
            assert event.to_dict()["surge_id"] is None


def test_an_incident_opened_before_a_surge_points_at_it_from_its_next_event():
    district, reports = _stream(seed=2)
    detector = Driven()
    events = detector.feed(sorted(reports, key=lambda r: (r.ts_ms, r.id)))
    events += detector.flush()
    surge_ids = {e.incident_id for e in events if e.kind == "surge"}
    for event in events:
        if event.kind == "local":
            assert event.surge_id is None or event.surge_id in surge_ids


def _rfc(ms: int) -> str:
    from geoincident.detectors.timefmt import format_ms

    return format_ms(ms)
