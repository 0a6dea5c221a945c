"""Matching opened incidents to planted truth, on hand-made pairs."""

from __future__ import annotations

import h3
import pytest

from geoincident.sim.common import format_ts_utc, offset_m, parse_ts_ms
from geoincident.sim.evaluate import evaluate
from geoincident.sim.simulate import EXPECT_BY_FAMILY, TruthItem

T0_MS = parse_ts_ms("2026-11-24T09:00:00Z")
LAT, LON = 47.61, -122.33


def truth(
    truth_id: str,
    family: str = "true",
    *,
    category: str = "pothole",
    north_m: float = 0.0,
    start_min: float = 0.0,
    span_min: float = 3.0,
    radius_m: float = 40.0,
    report_ids: tuple[str, ...] = (),
    region: str | None = None,
) -> TruthItem:
    lat, lon = offset_m(LAT, LON, north_m, 0.0)
    start_ms = T0_MS + round(start_min * 60_000)
    end_ms = start_ms + round(span_min * 60_000)
    return TruthItem(
        id=truth_id,
        family=family,
        category=category,
        expect=EXPECT_BY_FAMILY[family],
        lat=lat,
        lon=lon,
        start=format_ts_utc(start_ms),
        end=format_ts_utc(end_ms),
        start_ms=start_ms,
        end_ms=end_ms,
        reporters=5,
        independent=5,
        reports=5,
        devices=5,
        radius_m=radius_m,
        report_ids=list(report_ids),
        sources={},
        region=region,
    )


def opened(
    incident_id: str,
    *,
    category: str = "pothole",
    north_m: float = 0.0,
    first_min: float = 0.0,
    validated_min: float = 2.0,
    last_min: float = 2.0,
    emitted_s: float = 0.0,
    kind: str = "local",
    event: str = "opened",
    report_ids: tuple[str, ...] = (),
    surge_region: str | None = None,
) -> dict:
    lat, lon = offset_m(LAT, LON, north_m, 0.0)
    validated_ms = T0_MS + round(validated_min * 60_000)
    obj = {
        "schema": 1,
        "incident_id": incident_id,
        "event": event,
        "version": 1,
        "kind": kind,
        "category": category,
        "lat": lat,
        "lon": lon,
        "first_report_at": format_ts_utc(T0_MS + round(first_min * 60_000)),
        "validated_at": format_ts_utc(validated_ms),
        "last_report_at": format_ts_utc(T0_MS + round(last_min * 60_000)),
        "emitted_at": format_ts_utc(validated_ms + round(emitted_s * 1000)),
        "report_count": 5,
        "independent_reporters": 5,
        "report_ids": list(report_ids),
    }
    if surge_region:
        obj["surge"] = {"region": surge_region}
    return obj


def test_an_incident_on_its_truth_gives_full_recall_and_precision():
    result = evaluate([opened("i1", north_m=30)], [truth("t1")])
    assert result.recall == 1.0 and result.precision == 1.0
    assert result.decoy_hits == result.splits == result.false_incidents == 0
    assert result.delay_first_report_p50_s == pytest.approx(120.0)


def test_a_missed_truth_lowers_recall_and_is_named():
    result = evaluate([opened("i1")], [truth("t1"), truth("t2", north_m=5000)])
    assert result.recall == 0.5 and result.missed_truths == ("t2",)


def test_two_incidents_on_one_truth_are_a_split():
    result = evaluate([opened("i1"), opened("i2", north_m=60)], [truth("t1")])
    assert result.splits == 1 and result.split_truths == ("t1",)
    assert result.recall == 1.0 and result.precision == 1.0


def test_an_incident_on_a_decoy_is_a_decoy_hit_and_not_precise():
    truths = [truth("t1"), truth("d1", "repeater", north_m=3000)]
    result = evaluate([opened("i1"), opened("i2", north_m=3000)], truths)
    assert result.decoy_hits == 1 and result.decoy_truths_hit == ("d1",)
    assert result.precision == 0.5
    repeater = next(f for f in result.families if f.family == "repeater")
    assert repeater.detected == 1 and repeater.expect == "none"


def test_an_incident_far_from_any_truth_is_a_false_incident_from_background():
    result = evaluate([opened("i1"), opened("bg", north_m=8000)], [truth("t1")])
    assert result.false_incidents == 1 and result.false_incident_ids == ("bg",)
    assert result.precision == 0.5


@pytest.mark.parametrize(
    "incident",
    [
        opened("other-category", category="gas_leak"),
        opened("too-far", north_m=500),
        opened("too-late", first_min=20, validated_min=22, last_min=22),
    ],
    ids=lambda i: i["incident_id"],
)
def test_category_distance_and_time_must_all_agree(incident):
    result = evaluate([incident], [truth("t1")])
    assert result.recall == 0.0 and result.false_incidents == 1


def test_a_few_minutes_of_time_slack_still_match():
    result = evaluate([opened("i1", first_min=6, validated_min=7, last_min=7)], [truth("t1")])
    assert result.recall == 1.0


def test_a_merged_close_pair_counts_for_one_truth_only():
    truths = [truth("a", "close_pair"), truth("b", "close_pair", north_m=600)]
    result = evaluate([opened("merged", north_m=280)], truths)
    assert result.detected == 1 and result.recall == 0.5


def test_shared_report_ids_decide_between_two_candidate_truths():
    truths = [truth("a", report_ids=("r1", "r2")), truth("b", north_m=100, report_ids=("r3",))]
    result = evaluate([opened("i1", report_ids=("r3",))], truths)
    assert result.missed_truths == ("a",)


def test_only_opened_events_count_and_a_repeated_opened_counts_once():
    events = [
        opened("i1"),
        opened("i1"),
        opened("i1", event="updated"),
        opened("i1", event="resolved"),
        opened("x", north_m=9000, event="updated"),
    ]
    result = evaluate(events, [truth("t1")])
    assert result.opened_local == 1 and result.splits == 0 and result.false_incidents == 0


def test_a_surge_event_matches_the_surge_truth_and_local_clumps_in_it_are_not_false():
    region = h3.latlng_to_cell(LAT, LON, 6)
    truths = [truth("t1"), truth("s1", "surge", category="gas_leak", span_min=10, region=region)]
    events = [
        opened("i1"),
        opened(
            "surge-1",
            kind="surge",
            category="gas_leak",
            validated_min=6,
            last_min=6,
            surge_region=region,
        ),
        opened("clump", category="gas_leak", north_m=900, first_min=3, validated_min=4),
    ]
    result = evaluate(events, truths)
    assert result.surge_detected == 1 and result.false_surges == 0
    assert result.surge_local == 1 and result.false_incidents == 0
    assert result.precision == 1.0 and result.recall == 1.0


def test_a_surge_event_elsewhere_is_a_false_surge():
    region = h3.latlng_to_cell(LAT, LON, 6)
    truths = [truth("s1", "surge", category="gas_leak", region=region)]
    events = [opened("s", kind="surge", category="power_outage")]
    result = evaluate(events, truths)
    assert result.false_surges == 1 and result.surge_detected == 0


def test_delays_are_measured_from_the_first_report_and_from_the_threshold_report():
    truths = [truth("t1"), truth("t2", north_m=5000)]
    events = [
        opened("i1", validated_min=1, emitted_s=0.5),
        opened("i2", north_m=5000, validated_min=3),
    ]
    result = evaluate(events, truths)
    assert result.delay_first_report_p50_s == pytest.approx(120.0)
    assert result.delay_first_report_p95_s == pytest.approx(174.0)
    assert result.delay_emit_p95_s == pytest.approx(0.475)


def test_no_incident_at_all_is_zero_recall_but_no_false_alarm():
    result = evaluate([], [truth("t1")])
    assert result.recall == 0.0 and result.precision == 1.0


def test_an_unusable_opened_event_is_an_error_naming_the_incident():
    with pytest.raises(ValueError, match="broken"):
        evaluate([{"event": "opened", "incident_id": "broken"}], [truth("t1")])
