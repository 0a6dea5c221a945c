"""Validated means significant (docs/design.md, "Significance"): an incident must stand out from
the background of its category around it; where reports are rare nothing changes."""

import math
import random
from dataclasses import replace

import pytest

from geoincident.detectors import DetectorParams
from geoincident.detectors.significance import SignificanceParams, judge, poisson_tail
from geoincident.geo import destination, haversine_m
from tests.builders import MINUTE_MS, SPOT, T0_MS, Driven, opened, report, ring

NO_TEST = DetectorParams(significance=SignificanceParams(enabled=False))


def uniform_background(
    per_km2_min: float,
    radius_m: float,
    minutes: float,
    seed: int,
    category: str = "streetlight_out",
    prefix: str = "bg",
):
    """A Poisson background of one category over a disk around SPOT, one reporter a report."""
    rng = random.Random(seed)
    area_km2 = math.pi * (radius_m / 1000.0) ** 2
    rate_per_min = per_km2_min * area_km2
    reports = []
    minute = 0.0
    while True:
        minute += rng.expovariate(rate_per_min)
        if minute >= minutes:
            return reports
        lat, lon = destination(*SPOT, rng.uniform(0, 360), radius_m * math.sqrt(rng.random()))
        reports.append(report(f"{prefix}{len(reports)}", minute, lat, lon, category=category))


def replay(reports, params=None):
    detector = Driven(params or DetectorParams())
    ordered = sorted(reports, key=lambda r: (r.ts_ms, r.id))
    return detector, detector.feed(ordered) + detector.flush()


# ~1,000 reports/min over 350 km² spread over eight categories: 0.36 per km² per minute each
DENSE = 0.36


def test_a_dense_background_opens_chance_incidents_without_the_test_and_none_with_it():
    background = uniform_background(DENSE, 4000.0, 180, seed=1)
    assert len(background) > 3000
    _, without = replay(background, NO_TEST)
    detector, with_test = replay(background)
    assert len(opened(without)) >= 10  # five reporters within 250 m happen by chance here
    assert opened(with_test) == []
    assert detector.detector.chance_groups >= len(opened(without))


def test_a_sparse_five_reporter_incident_opens_at_its_threshold_crossing_report():
    background = uniform_background(0.002, 4000.0, 120, seed=2)  # a few reports an hour
    incident = ring(5, 60, start_minute=60, step_minutes=1.5, prefix="fire")
    _, events = replay(background + incident)
    found = opened(events)
    assert len(found) == 1
    assert found[0].validated_at == "2026-11-24T10:06:00.000Z"  # the fifth report's time
    assert found[0].trigger_report_id == "fire4"
    assert found[0].independent_reporters == 5


def test_a_real_incident_stands_out_of_a_dense_background():
    background = uniform_background(DENSE, 4000.0, 120, seed=3)
    # seven neighbours within ~40 m over four minutes: what a real failure looks like
    incident = ring(7, 35, start_minute=60, step_minutes=0.6, prefix="fire")
    _, events = replay(background + incident)
    found = opened(events)
    assert len(found) == 1
    last = [e for e in events if e.incident_id == found[0].incident_id][-1]
    assert {f"fire{n}" for n in range(7)} <= set(last.report_ids)


def test_the_expected_chance_rate_rises_with_background_and_falls_with_more_reporters():
    scales = [(100.0, 600.0)]
    quiet = judge(scales, [5.0], 0.001, 1.0, 0.125)
    busy = judge(scales, [5.0], 1.0, 100.0, 0.125)
    busier_count = judge(scales, [9.0], 1.0, 100.0, 0.125)
    assert quiet.significant and not busy.significant and busier_count.significant
    assert quiet.false_per_day < busier_count.false_per_day < busy.false_per_day


@pytest.mark.parametrize(("k", "mu"), [(1, 0.5), (4, 0.01), (5, 2.0), (12, 30.0), (3, 1e-6)])
def test_the_poisson_tail_matches_the_sum_of_its_terms(k, mu):
    def term(i):
        return math.exp(i * math.log(mu) - mu - math.lgamma(i + 1))

    head = sum(term(i) for i in range(k))
    tail = sum(term(i) for i in range(k, k + 200))
    assert poisson_tail(k, mu) == pytest.approx(tail, rel=1e-9)
    assert poisson_tail(k, mu) == pytest.approx(max(0.0, 1 - head), abs=1e-12)


def test_a_cold_start_in_a_busy_city_does_not_flood():
    # No history at all: the first minutes are judged against what the window holds so far.
    background = uniform_background(2 * DENSE, 4000.0, 20, seed=5)
    _, events = replay(background)
    assert opened(events) == []


def test_significance_settings_are_validated_naming_the_key():
    with pytest.raises(ValueError, match="detection.significance.max_false_per_day"):
        SignificanceParams(max_false_per_day=0)
    with pytest.raises(ValueError, match="detection.significance.radii_m"):
        SignificanceParams(radii_m=())


def test_a_group_is_tested_only_at_scales_within_its_category_rules():
    params = DetectorParams()
    small = replace(params.defaults, radius_m=80.0, window_s=240.0)
    detector = Driven(replace(params, defaults=small))
    scales = detector.detector.chance.scales_of("streetlight_out", small)
    assert max(r for r, _ in scales) == 80.0 and max(w for _, w in scales) == 240.0
    assert (50.0, 180.0) in scales


def test_members_of_an_incident_opened_in_a_busy_area_lie_within_its_radius():
    background = uniform_background(DENSE, 3000.0, 60, seed=6)
    incident = ring(8, 30, start_minute=30, step_minutes=0.5, prefix="fire")
    _, events = replay(background + incident)
    found = opened(events)
    assert len(found) == 1
    positions = {r.id: (r.lat, r.lon) for r in background + incident}
    for report_id in found[0].report_ids:
        assert haversine_m(found[0].lat, found[0].lon, *positions[report_id]) <= 250.0


@pytest.mark.parametrize(("busier", "seed"), [(1, 8), (1, 10), (2, 8)])
def test_the_edge_of_a_busy_city_is_not_taken_for_a_quiet_neighbourhood(busier, seed):
    # A busy city that ends along a line (a shore): around a group near the edge, half of the
    # neighbourhood is where nobody reports from, which must not halve the background rate.
    # (Counting the empty half, each of these streams opened a chance incident.)
    city = [
        r for r in uniform_background(busier * DENSE, 3000.0, 240, seed=seed) if r.lon >= SPOT[1]
    ]
    detector, events = replay(city)
    assert opened(events) == []
    assert detector.detector.chance_groups > 0  # groups reached the threshold and were judged


def test_inhabited_boxes_tell_an_edge_from_a_thin_background():
    from geoincident.detectors.significance import inhabited_boxes

    assert inhabited_boxes(4, 4, 25) == 25  # a few reports, each alone: nothing to conclude
    assert inhabited_boxes(0, 0, 25) == 25
    assert inhabited_boxes(300, 25, 25) == 25
    edge = inhabited_boxes(240, 13, 25)  # many reports, half the boxes empty: a shore
    assert 13 <= edge < 13.5
    assert 13 < inhabited_boxes(30, 13, 25) < 25  # fewer reports: some emptiness is chance


def test_an_incident_reaches_no_further_than_the_radius_around_where_it_opened():
    # Reports every 50 m along a 2 km street: an incident whose centre followed its members
    # would walk down the street taking them all; its reach stays where it opened.
    from geoincident.detectors.timefmt import parse_rfc3339_ms

    street = [report(f"s{n}", n * 0.5, *destination(*SPOT, 90.0, 50.0 * n)) for n in range(40)]
    _, events = replay(street)
    position = {r.id: (r.lat, r.lon) for r in street}
    first = {}
    for event in events:
        first.setdefault(event.incident_id, event)
        anchor = (first[event.incident_id].lat, first[event.incident_id].lon)
        for report_id in event.report_ids:
            assert haversine_m(*anchor, *position[report_id]) <= 250.0 + 1.0
        assert parse_rfc3339_ms(event.validated_at) >= parse_rfc3339_ms(event.first_report_at)
    assert len(first) >= 3  # the street is covered by several incidents, each a place


def test_an_incident_in_a_busy_area_goes_quiet_when_only_the_background_still_joins_it():
    # Downtown a few strangers an hour pass within 250 m of any place; an incident whose own
    # reports stopped must not stay open forever on them.
    background = uniform_background(DENSE, 3000.0, 240, seed=11)
    incident = ring(8, 30, start_minute=30, step_minutes=0.5, prefix="fire")
    _, events = replay(background + incident)
    mine = [e for e in events if "fire0" in e.report_ids]
    assert mine[0].event == "opened"
    assert mine[-1].event == "resolved" and mine[-1].resolved_reason == "quiet"
    assert mine[-1].report_count > 8  # the background did join it meanwhile
    assert mine[-1].emitted_at <= "2026-11-24T11:00:00.000Z"  # its own reports ended 09:33:30


def test_where_reports_are_rare_one_late_member_keeps_an_incident_open_for_an_hour():
    detector = Driven()
    events = detector.feed(ring(5, 30) + [report("late", 50, reporter="sixth")])
    events += detector.detector.advance(T0_MS + (50 + 59) * MINUTE_MS)
    assert [e.event for e in events if e.event != "updated"] == ["opened"]
    events += detector.detector.advance(T0_MS + (50 + 61) * MINUTE_MS)
    assert events[-1].event == "resolved" and events[-1].resolved_reason == "quiet"
