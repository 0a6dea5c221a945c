"""Detection semantics (docs/design.md): what counts as agreement, and the decoys that must not."""

import random

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoincident.detectors import DetectorParams
from geoincident.geo import destination, haversine_m
from tests.builders import MINUTE_MS, SPOT, T0_MS, Driven, opened, report, ring, run

CONTRACT_FIELDS = {
    "schema",
    "incident_id",
    "event",
    "version",
    "kind",
    "category",
    "lat",
    "lon",
    "h3_cell",
    "cells",
    "geometry",
    "radius_m",
    "first_report_at",
    "validated_at",
    "last_report_at",
    "emitted_at",
    "report_count",
    "independent_reporters",
    "score",
    "confidence",
    "report_ids",
    "sources",
    "jurisdiction",
}


def test_five_independent_reporters_open_exactly_one_incident_with_every_contract_field():
    events = run(ring(5, 100, step_minutes=2))
    assert len(events) == 1
    body = events[0].to_dict()
    assert set(body) >= CONTRACT_FIELDS
    assert body["schema"] == 1 and body["event"] == "opened" and body["version"] == 1
    assert body["kind"] == "local" and body["category"] == "streetlight_out"
    assert body["report_count"] == 5 and body["independent_reporters"] == 5
    assert body["score"] == 5.0 and 0 < body["confidence"] <= 1
    assert body["first_report_at"] == "2026-11-24T09:00:00.000Z"
    assert body["validated_at"] == body["last_report_at"] == "2026-11-24T09:08:00.000Z"
    assert body["emitted_at"] == body["validated_at"]
    assert sorted(body["report_ids"]) == [f"r{n}" for n in range(5)]
    assert body["sources"] == {"unknown": 5} and body["jurisdiction"] is None
    assert haversine_m(body["lat"], body["lon"], *SPOT) < 5
    assert 95 < body["radius_m"] <= 101
    assert body["h3_cell"] == h3.latlng_to_cell(body["lat"], body["lon"], 10)
    assert body["geometry"]["type"] == "Polygon"
    assert set(body["cells"]) == {h3.latlng_to_cell(r.lat, r.lon, 10) for r in ring(5, 100)}


def test_four_reporters_open_nothing():
    assert run(ring(4, 100)) == []


def _across_an_edge(resolution: int) -> list:
    """Five reporters straddling the edge shared by two cells at `resolution`."""
    cell = h3.latlng_to_cell(*SPOT, resolution)
    neighbour = sorted(h3.grid_ring(cell, 1))[0]
    edge = h3.cells_to_directed_edge(cell, neighbour)
    (a_lat, a_lon), (b_lat, b_lon) = h3.directed_edge_to_boundary(edge)
    mid = ((a_lat + b_lat) / 2, (a_lon + b_lon) / 2)
    sides = [h3.cell_to_latlng(cell), h3.cell_to_latlng(neighbour)]
    reports = []
    for n in range(5):
        target = sides[n % 2]
        # 20 m from the edge's midpoint towards one cell's centre or the other's
        bearing = _bearing(mid, target)
        lat, lon = destination(mid[0], mid[1], bearing, 20.0 + n)
        reports.append(report(f"e{n}", n, lat, lon, reporter=f"edge-user{n}"))
    assert len({h3.latlng_to_cell(r.lat, r.lon, resolution) for r in reports}) == 2
    return reports


def _bearing(a, b):
    import math

    phi1, phi2 = math.radians(a[0]), math.radians(b[0])
    dl = math.radians(b[1] - a[1])
    y = math.sin(dl) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360


@pytest.mark.parametrize("resolution", range(5, 11))
def test_reports_across_a_cell_edge_make_one_incident(resolution):
    events = run(_across_an_edge(resolution), DetectorParams(resolution=resolution))
    assert len(opened(events)) == 1


def test_a_cluster_straddling_a_quarter_hour_boundary_is_one_incident():
    # 09:13 .. 09:17: a tumbling 15-minute window would cut it 3 + 2
    events = run(ring(5, 50, start_minute=13, step_minutes=1))
    assert len(opened(events)) == 1


def test_one_reporter_posting_eight_times_is_not_an_incident():
    reports = [report(f"x{n}", n, reporter="same-person") for n in range(8)]
    assert run(reports) == []


def test_eight_accounts_on_one_device_are_not_an_incident():
    reports = [r for r in ring(8, 30)]
    for r in reports:
        r.device = "phone-1"
    assert run(reports) == []


def test_five_reporters_eleven_minutes_apart_are_not_an_incident():
    assert run(ring(5, 30, step_minutes=11)) == []


def test_six_reporters_scattered_over_three_km_are_not_an_incident():
    reports = [
        report(f"s{n}", n, *destination(*SPOT, 60.0 * n, 500.0 + 500.0 * (n % 3))) for n in range(6)
    ]
    assert run(reports) == []


def test_two_clusters_600_m_apart_are_two_incidents():
    east = destination(*SPOT, 90.0, 600.0)
    events = run(ring(5, 40, prefix="a") + ring(5, 40, centre=east, prefix="b"))
    assert len(opened(events)) == 2


def test_two_categories_at_one_spot_are_judged_apart():
    lights = ring(3, 30, prefix="l")
    potholes = ring(3, 30, prefix="p", category="pothole")
    assert run(lights + potholes) == []
    both = run(ring(5, 30, prefix="l") + ring(5, 30, prefix="p", category="pothole"))
    assert sorted(e.category for e in opened(both)) == ["pothole", "streetlight_out"]


def test_one_staff_report_validates_when_staff_weighs_five():
    staff = [report("inspector", 0, source="staff")]
    assert run(staff) == []  # default weights are all 1.0
    events = run(staff, DetectorParams(source_weights={"staff": 5.0}))
    assert len(opened(events)) == 1
    assert events[0].score == 5.0 and events[0].sources == {"staff": 1}


def _stream(seed: int) -> list:
    """Three incidents and noise over two hours, in event-time order."""
    rng = random.Random(seed)
    reports = []
    for k, start in enumerate((5, 40, 95)):
        centre = destination(*SPOT, 120.0 * k + rng.uniform(0, 30), rng.uniform(1500, 3000))
        reports += ring(
            rng.randint(5, 9),
            60,
            centre=centre,
            start_minute=start,
            step_minutes=0.7,
            prefix=f"i{k}-",
        )
    for n in range(200):
        lat, lon = destination(*SPOT, rng.uniform(0, 360), rng.uniform(0, 8000))
        reports.append(report(f"bg{n}", rng.uniform(0, 120), lat, lon))
    return sorted(reports, key=lambda r: (r.ts_ms, r.id))


def _shuffle_within(reports, lateness_ms, rng):
    """Arrival order = event time + a delay below the lateness bound."""
    delayed = [(r.ts_ms + rng.randrange(0, lateness_ms), r.id, r) for r in reports]
    return [r for _, _, r in sorted(delayed)]


def _encode(events) -> bytes:
    return b"\n".join(e.to_json() for e in events)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), shuffle_seed=st.integers(0, 10_000))
def test_shuffling_arrival_within_lateness_gives_byte_identical_output(seed, shuffle_seed):
    reports = _stream(seed)
    baseline = _encode(run(reports))
    shuffled = _shuffle_within(reports, 120_000, random.Random(shuffle_seed))
    assert shuffled != reports or len(reports) < 2
    assert _encode(run(shuffled)) == baseline
    assert baseline.count(b'"event":"opened"') >= 3


def test_updates_are_throttled_to_one_per_interval():
    # 5 reporters validate at minute 4; 10 more arrive every 5 s afterwards.
    reports = ring(5, 30, step_minutes=1)
    reports += [report(f"late{n}", 4 + (n + 1) / 12, reporter=f"more{n}") for n in range(10)]
    events = run(reports)
    updates = [e for e in events if e.event == "updated"]
    assert 1 <= len(updates) <= 2
    emitted = [e.emitted_at for e in events]
    from geoincident.detectors.timefmt import parse_rfc3339_ms

    times = [parse_rfc3339_ms(t) for t in emitted]
    assert all(b - a >= 30_000 for a, b in zip(times, times[1:], strict=False))
    assert events[-1].independent_reporters == 15


def test_quiet_for_an_hour_resolves_and_a_new_cluster_opens_a_new_incident():
    first = ring(5, 30, prefix="a")
    again = ring(5, 30, prefix="b", start_minute=4 + 61)
    detector = Driven()
    events = detector.feed(first)
    events += detector.detector.advance(T0_MS + (4 + 59) * MINUTE_MS)
    assert [e.event for e in events] == ["opened"]
    events += detector.detector.advance(T0_MS + (4 + 60) * MINUTE_MS)
    assert [e.event for e in events] == ["opened", "resolved"]
    assert events[-1].resolved_reason == "quiet"
    assert events[-1].emitted_at == "2026-11-24T10:04:00.000Z"
    events += detector.feed(again) + detector.flush()
    assert [e.event for e in events] == ["opened", "resolved", "opened"]
    assert events[0].incident_id != events[2].incident_id


def test_state_holds_no_more_than_window_plus_lateness_of_reports():
    params = DetectorParams()
    detector = Driven(params)
    rng = random.Random(7)
    per_minute = 40
    span_ms = params.defaults.window_ms + params.allowed_lateness_ms
    bound = per_minute * span_ms // MINUTE_MS + per_minute  # one minute of slack for rounding
    peak = 0
    for minute in range(6 * 60):
        batch = []
        for n in range(per_minute):
            lat, lon = destination(*SPOT, rng.uniform(0, 360), rng.uniform(0, 5000))
            batch.append(report(f"m{minute}-{n}", minute + n / per_minute, lat, lon))
        detector.feed(batch)
        peak = max(peak, detector.detector.state_reports)
    assert detector.detector.counts["accepted"] == 6 * 60 * per_minute
    assert 0 < peak <= bound


def test_merging_clusters_keep_the_older_incident():
    west = destination(*SPOT, 270.0, 130.0)
    east = destination(*SPOT, 90.0, 130.0)
    reports = ring(5, 20, centre=west, prefix="w")
    reports += ring(5, 20, centre=east, prefix="e", start_minute=6)
    # reporters in between pull the two centres together
    reports += ring(6, 15, centre=SPOT, prefix="m", start_minute=12, step_minutes=0.3)
    events = run(reports)
    ids = {e.incident_id for e in opened(events)}
    resolved = [e for e in events if e.event == "resolved"]
    if len(ids) == 2:
        assert len(resolved) == 1 and resolved[0].resolved_reason == "superseded"
        assert resolved[0].superseded_by in ids - {resolved[0].incident_id}
    assert events[0].incident_id not in {e.incident_id for e in resolved}


def test_a_blocked_reporter_counts_for_nothing_from_then_on():
    detector = Driven()
    detector.detector.block(reporter="r-user4")
    events = detector.feed(ring(5, 30)) + detector.flush()
    assert events == []
    events = detector.feed(ring(1, 30, prefix="x", start_minute=5)) + detector.flush()
    assert len(events) == 1 and events[0].independent_reporters == 5
    assert events[0].report_count == 6 and events[0].score == 5.0


def test_independence_counts_people_not_accounts_or_devices():
    from geoincident.detectors.independence import Independence

    group = Independence()
    group.add("alice", "phone-1", 1.0)
    group.add("bob", "phone-1", 1.0)  # shares alice's phone
    group.add("alice", "tablet", 1.0)  # alice again, another device
    group.add("carol", None, 5.0)
    group.add("mallory", None, 0.0)  # blocked
    assert group.groups == 2 and group.score == 6.0


def test_an_empty_result_is_a_new_list_every_time():
    # The embedding idiom `outcome, events = detector.observe(r); events += ...` extends what
    # observe returned; a shared empty list would then carry stale events everywhere.
    from geoincident.detectors import Detector
    from geoincident.detectors.surge import SurgeDetector, SurgeParams

    first = Detector()
    _, events = first.observe(report("a", 0))
    events += ["stale"]
    _, events = first.observe(report("a", 0))  # a duplicate
    events += ["stale"]
    other = Detector()
    assert other.observe(report("b", 0)) == ("accepted", [])
    assert other.observe(report("b", 0)) == ("duplicate", [])
    assert other.advance(T0_MS) == []
    disabled = SurgeDetector(SurgeParams(enabled=False))
    surge_events = disabled.observe(report("c", 0))
    surge_events += ["stale"]
    assert disabled.observe(report("d", 0)) == [] and disabled.advance(T0_MS) == []


def test_a_categorys_own_quiet_time_keeps_its_incidents_open_and_only_its_own():
    from geoincident.stream.config import load_settings

    params = load_settings(
        None, {"detection.categories": {"pothole": {"resolve_after_s": 7 * 24 * 3600.0}}}
    ).detector_params()
    lights = ring(5, 30, prefix="l")
    holes = ring(5, 30, centre=destination(*SPOT, 90.0, 3000.0), prefix="h", category="pothole")
    far = destination(*SPOT, 180.0, 8000.0)
    clock = [report(f"t{n}", 10 + 10 * n, *far) for n in range(30)]  # event time to 5 h later
    driven = Driven(params)
    events = driven.feed(sorted(lights + holes + clock, key=lambda r: (r.ts_ms, r.id)))
    events += driven.detector.advance(T0_MS + 5 * 60 * MINUTE_MS)
    resolved = {e.category for e in events if e.event == "resolved"}
    opened_ = {e.category for e in events if e.event == "opened"}
    assert opened_ == {"streetlight_out", "pothole"}
    assert resolved == {"streetlight_out"}  # quiet after an hour; the pothole waits a week


def test_confidence_rises_with_independent_weight_and_sources_and_falls_with_spread_and_chance():
    from hypothesis import given
    from hypothesis import strategies as st

    from geoincident.detectors.lifecycle import confidence_of

    def at(**changes):
        base = {"score": 5.0, "threshold": 5.0, "significance": 1.0, "spread_m": 50.0}
        base |= {"radius_m": 250.0, "sources": 1}
        return confidence_of(**(base | changes))

    positive = st.floats(0.01, 100.0)

    @given(positive, positive, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
    def monotone(a, b, s1, s2):
        low, high = sorted((a, b))
        assert at(score=low) <= at(score=high)
        assert at(spread_m=low) >= at(spread_m=high)
        assert at(significance=min(s1, s2)) <= at(significance=max(s1, s2))
        assert 0.0 <= at(score=high, spread_m=low, significance=s1) <= 1.0

    monotone()
    assert [at(sources=k) for k in (1, 2, 3)] == sorted(at(sources=k) for k in (1, 2, 3))
    assert at(sources=1) < at(sources=2)
    assert at(score=5.0, spread_m=0.0) == 0.675  # the documented worked example


def test_an_incident_reads_surer_with_more_reporters_and_less_sure_when_spread():
    def first_opened(reports):
        return opened(run(reports))[0].confidence

    tight = first_opened(ring(5, 10))
    spread = first_opened(ring(5, 120))
    assert spread < tight
    grown = [e for e in run(ring(9, 10, step_minutes=0.5)) if e.event != "resolved"][-1]
    assert grown.independent_reporters == 9 and grown.confidence > tight


def test_each_listed_member_says_where_when_and_from_what_source_it_came():
    from geoincident.detectors.timefmt import parse_rfc3339_ms

    reports = ring(5, 30, source="app")
    events = run(reports)
    last = [e for e in events if e.incident_id == events[0].incident_id][-1]
    body = last.to_dict()
    assert [m["id"] for m in body["members"]] == body["report_ids"]
    by_id = {r.id: r for r in reports}
    for member in body["members"]:
        report = by_id[member["id"]]
        assert (member["lat"], member["lon"]) == (round(report.lat, 7), round(report.lon, 7))
        assert parse_rfc3339_ms(member["at"]) == report.ts_ms and member["source"] == "app"
