"""Matching opened incidents to planted truth, on hand-made pairs."""

from __future__ import annotations

from pathlib import Path

import h3
import msgspec
import orjson
import pytest

from geoincident.sim.common import format_ts_utc, offset_m, parse_ts_ms
from geoincident.sim.evaluate import evaluate, evaluate_files, load_truth_run
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


# ---------------------------------------------------------------- busy cities


def test_chance_incidents_are_the_false_ones_scaled_to_a_simulated_day():
    events = [opened("i1"), opened("bg1", north_m=8000), opened("bg2", north_m=-8000)]
    result = evaluate(events, [truth("t1")], duration_h=6.0)
    assert result.chance_incidents == result.false_incidents == 2
    assert result.chance_per_day == pytest.approx(8.0)
    doc = result.to_json()
    assert doc["chance_incidents"] == 2 and doc["chance_per_day"] == pytest.approx(8.0)
    assert doc["duration_h"] == 6.0 and doc["false_incidents"] == 2
    unknown = evaluate(events, [truth("t1")])
    assert unknown.chance_per_day is None and unknown.to_json()["chance_per_day"] is None


def _truth_file(tmp_path, **keys) -> Path:
    path = tmp_path / "truth.json"
    item = msgspec.to_builtins(truth("t1"))
    path.write_bytes(orjson.dumps({**keys, "items": [item]}))
    return path


@pytest.mark.parametrize(
    ("keys", "duration_h"),
    [
        ({"hours": 2.0, "start": "2026-11-24T06:00:00Z", "end": "2026-11-24T08:00:00Z"}, 2.0),
        ({"start": "2026-11-24T06:00:00Z", "end": "2026-11-24T18:00:00Z"}, 12.0),
        ({}, None),  # an old truth file: still evaluates, without a rate per day
    ],
)
def test_the_duration_comes_from_the_truth_file_when_it_says(tmp_path, keys, duration_h):
    incidents = tmp_path / "incidents.jsonl"
    incidents.write_bytes(orjson.dumps(opened("bg", north_m=8000)) + b"\n")
    assert load_truth_run(_truth_file(tmp_path, **keys)).duration_h == duration_h
    result = evaluate_files(incidents, _truth_file(tmp_path, **keys))
    assert result.chance_incidents == 1
    assert result.chance_per_day == (None if duration_h is None else pytest.approx(24 / duration_h))


def _neighbour(cell: str) -> str:
    return sorted(h3.grid_ring(cell, 1))[0]


def _outbreak_truth(regions: list[str]) -> TruthItem:
    return truth(
        "o1",
        "outbreak",
        category="power_outage",
        span_min=10,
        radius_m=2500,
        region=",".join(regions),
    )


def test_an_outbreak_counts_its_surges_its_local_clumps_and_their_links():
    home = h3.latlng_to_cell(LAT, LON, 6)
    next_door = _neighbour(home)
    far = h3.latlng_to_cell(*offset_m(LAT, LON, 40_000, 0), 6)
    truths = [_outbreak_truth([home, next_door])]

    def surge(incident_id: str, region: str, **kw) -> dict:
        base = {"kind": "surge", "category": "power_outage", "validated_min": 5, "last_min": 5}
        event = opened(incident_id, surge_region=region, **{**base, **kw})
        lat, lon = h3.cell_to_latlng(region)
        return {**event, "lat": lat, "lon": lon, "cells": [region]}

    def local(incident_id: str, surge_id: str | None = None, **kw) -> dict:
        event = opened(incident_id, category="power_outage", first_min=3, validated_min=4, **kw)
        return event if surge_id is None else {**event, "surge_id": surge_id}

    events = [
        surge("srg-a", home),
        surge("srg-a", home),  # repeated on an at-least-once topic: still one surge
        surge("srg-b", next_door, first_min=2, validated_min=8, last_min=8),
        surge("srg-gas", home, category="gas_leak"),
        surge("srg-far", far),
        surge("srg-late", home, first_min=40, validated_min=41, last_min=41),
        local("l-linked", "srg-a", north_m=300),
        local("l-plain", north_m=-900),  # no surge_id field: an incident file from before it
        local("l-linked-later", north_m=1500),
        {**local("l-linked-later", "srg-b", north_m=1500), "event": "updated", "version": 2},
        local("l-other-surge", "srg-far", north_m=2000),
        local("l-outside", "srg-a", north_m=5000),
        opened("l-gas", category="gas_leak", first_min=3, validated_min=4),
    ]
    result = evaluate(events, truths, duration_h=1.0)
    (score,) = result.outbreaks
    assert score.surge_ids == ("srg-a", "srg-b") and score.surges == 2
    assert score.local == 4 and score.local_linked == 2
    assert score.regions == (home, next_door)
    assert (result.outbreak_surges, result.outbreak_local, result.outbreak_local_linked) == (
        2,
        4,
        2,
    )
    # Clumps inside the outbreak are scored with it; the one outside and the other category
    # are chance incidents, and surges off the outbreak are false surges.
    assert result.surge_local == 4
    assert set(result.false_incident_ids) == {"l-outside", "l-gas"}
    assert result.false_surges == 3 and result.surge_detected == 1
    outbreak_family = next(f for f in result.families if f.family == "outbreak")
    assert outbreak_family.detected == 1 and outbreak_family.expect == "surge"
    doc = result.to_json()
    assert doc["outbreak_surges"] == 2 and doc["outbreak_local_linked"] == 2
    assert doc["outbreaks"][0]["surge_ids"] == ["srg-a", "srg-b"]


def test_one_surge_over_several_regions_is_the_goal_and_old_files_count_as_unlinked():
    home = h3.latlng_to_cell(LAT, LON, 6)
    next_door = _neighbour(home)
    truths = [_outbreak_truth([home, next_door])]
    # Centred on a region the outbreak never reached; it touches the outbreak through the
    # regions it grew over.
    beyond = next(c for c in sorted(h3.grid_ring(next_door, 1)) if c not in (home, next_door))
    lat, lon = h3.cell_to_latlng(beyond)
    one_surge = {
        **opened("srg-1", kind="surge", category="power_outage", validated_min=5, last_min=5),
        "lat": lat,
        "lon": lon,
        "surge": {"region": beyond, "regions": [beyond, next_door]},
    }
    alone = {**one_surge, "surge": {"region": beyond}}
    assert evaluate([alone], truths).outbreak_surges == 0
    clumps = [
        opened(f"l{n}", category="power_outage", north_m=200 * n, first_min=2, validated_min=3)
        for n in range(3)
    ]
    linked = evaluate([one_surge, *({**c, "surge_id": "srg-1"} for c in clumps)], truths)
    assert linked.outbreak_surges == 1
    assert (linked.outbreak_local, linked.outbreak_local_linked) == (3, 3)
    unlinked = evaluate([one_surge, *clumps], truths)
    assert (unlinked.outbreak_local, unlinked.outbreak_local_linked) == (3, 0)
    null_linked = evaluate([one_surge, *({**c, "surge_id": None} for c in clumps)], truths)
    assert null_linked.outbreak_local_linked == 0


def test_without_an_outbreak_its_numbers_are_null_not_zero():
    doc = evaluate([opened("i1")], [truth("t1")]).to_json()
    assert doc["outbreaks"] == []
    assert doc["outbreak_surges"] is doc["outbreak_local"] is doc["outbreak_local_linked"] is None
