"""The simulator's output, parsed back, has the shape its truth claims."""

from __future__ import annotations

import itertools
from collections import Counter

import h3
import orjson
import pytest

from geoincident.sim.common import QUARTER_HOUR_MS, haversine_m, parse_ts_ms
from geoincident.sim.simulate import (
    DEFAULT_FAMILY_COUNTS,
    FAMILIES,
    SimParams,
    Simulation,
    parse_families,
    report_to_json,
    simulate,
    truth_to_json,
)
from geoincident.sim.taxonomy import resolve_category

SEEDS = (1, 2, 3)
LATENESS_MS = 120_000


def _jsonl(sim: Simulation) -> bytes:
    return b"".join(orjson.dumps(report_to_json(r)) + b"\n" for r in sim.reports)


def _independent(reports: list[dict]) -> int:
    # A device shared by several accounts makes them one; one account on several devices is one.
    groups: list[set[str]] = []
    for report in reports:
        keys = {"r:" + report["reporter"]} | (
            {"d:" + report["device"]} if "device" in report else set()
        )
        joined = [g for g in groups if g & keys]
        merged = keys.union(*joined)
        groups = [g for g in groups if not g & keys] + [merged]
    return len(groups)


class Parsed:
    """One simulation as a consumer sees it: output lines parsed back, truth items as dicts."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.lines = [orjson.loads(line) for line in _jsonl(sim).splitlines()]
        self.by_id = {r["id"]: r for r in self.lines}
        self.truth = truth_to_json(sim)
        self.items = self.truth["items"]
        self.planted_ids = {rid for item in self.items for rid in item["report_ids"]}

    def members(self, item: dict) -> list[dict]:
        return [self.by_id[rid] for rid in item["report_ids"]]

    def family(self, name: str) -> list[dict]:
        return [item for item in self.items if item["family"] == name]


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def parsed(request) -> Parsed:
    return Parsed(simulate(SimParams(seed=request.param)))


def _max_pairwise_m(reports: list[dict]) -> float:
    return max(
        (
            haversine_m(a["lat"], a["lon"], b["lat"], b["lon"])
            for a, b in itertools.combinations(reports, 2)
        ),
        default=0.0,
    )


def _span_ms(reports: list[dict]) -> int:
    times = [parse_ts_ms(r["ts"]) for r in reports]
    return max(times) - min(times)


# ---------------------------------------------------------------- determinism and contract


def test_same_seed_gives_the_same_bytes_twice():
    first = simulate(SimParams(seed=7))
    second = simulate(SimParams(seed=7))
    assert _jsonl(first) == _jsonl(second)
    assert orjson.dumps(truth_to_json(first)) == orjson.dumps(truth_to_json(second))


def test_a_different_seed_gives_a_different_stream():
    assert _jsonl(simulate(SimParams(seed=7))) != _jsonl(simulate(SimParams(seed=8)))


def test_report_ids_are_unique_and_every_truth_member_is_in_the_output(parsed):
    ids = [r["id"] for r in parsed.lines]
    assert len(ids) == len(set(ids))
    assert all(rid.startswith(f"r-{parsed.sim.params.seed}-") for rid in ids)
    assert parsed.planted_ids <= set(ids)


def test_reports_follow_the_contract_shape(parsed):
    ts_forms = Counter()
    for report in parsed.lines:
        assert {"id", "ts", "lat", "lon", "reporter"} <= report.keys()
        assert -90 <= report["lat"] <= 90 and -180 <= report["lon"] <= 180
        assert (report["lat"], report["lon"]) != (0, 0)
        assert 1 <= len(report["reporter"]) <= 128
        ts = report["ts"]
        if isinstance(ts, int):
            ts_forms["epoch_ms"] += 1
        elif ts.endswith("Z"):
            ts_forms["z"] += 1
        else:
            ts_forms["offset"] += 1
        parse_ts_ms(ts)
        if "accuracy_m" in report:
            assert report["accuracy_m"] >= 0
        assert len(orjson.dumps(report)) < 64 * 1024
    assert set(ts_forms) == {"epoch_ms", "z", "offset"}


def test_report_styles_are_mixed_and_all_resolve_to_the_truth_category(parsed):
    styles = Counter()
    for item in parsed.items:
        for report in parsed.members(item):
            assert resolve_category(report) == item["category"], report
            if "category" in report:
                styles["category"] += 1
            elif "tags" in report:
                styles["tags"] += 1
            else:
                styles["text"] += 1
    assert all(styles[s] > 10 for s in ("category", "tags", "text")), styles
    tags = [t for r in parsed.lines for t in r.get("tags", ())]
    assert any(t.startswith("#") and any(c.isupper() for c in t) for t in tags)


def test_no_report_arrives_more_than_the_lateness_behind_the_stream(parsed):
    newest_ms = None
    for report in parsed.lines:
        ts_ms = parse_ts_ms(report["ts"])
        if newest_ms is not None:
            assert ts_ms > newest_ms - LATENESS_MS
        newest_ms = ts_ms if newest_ms is None else max(newest_ms, ts_ms)
    delays_ms = [r.arrival_ms - r.ts_ms for r in parsed.sim.reports]
    assert min(delays_ms) >= 0 and max(delays_ms) < LATENESS_MS
    # The tail is heavy: some reports really arrive much later than they happened.
    assert max(delays_ms) > 30_000


def test_truth_numbers_are_what_the_output_reports_show(parsed):
    for item in parsed.items:
        members = parsed.members(item)
        assert item["reports"] == len(members)
        assert item["reporters"] == len({r["reporter"] for r in members})
        assert item["devices"] == len({r["device"] for r in members if "device" in r})
        assert item["independent"] == _independent(members)
        assert item["start_ms"] == min(parse_ts_ms(r["ts"]) for r in members)
        assert item["end_ms"] == max(parse_ts_ms(r["ts"]) for r in members)
        assert parse_ts_ms(item["start"]) == item["start_ms"]
        radius_m = max(haversine_m(item["lat"], item["lon"], r["lat"], r["lon"]) for r in members)
        assert item["radius_m"] == pytest.approx(radius_m, abs=0.1)
        assert item["expect"] in ("incident", "none", "surge")
    assert parsed.truth["counts"] == dict(Counter(i["family"] for i in parsed.items)) | {
        f: 0 for f in FAMILIES if not parsed.family(f)
    }


def test_background_keeps_away_from_planted_items_of_its_category(parsed):
    background = [r for r in parsed.lines if r["id"] not in parsed.planted_ids]
    for item in parsed.items:
        if item["family"] == "surge":
            continue
        for report in background:
            if resolve_category(report) != item["category"]:
                continue
            ts_ms = parse_ts_ms(report["ts"])
            if item["start_ms"] - 1_800_000 <= ts_ms <= item["end_ms"] + 1_800_000:
                distance_m = haversine_m(item["lat"], item["lon"], report["lat"], report["lon"])
                assert distance_m >= item["radius_m"] + 500


def test_background_alone_never_puts_five_reporters_within_250_m_and_15_min(parsed):
    background = [
        (resolve_category(r), parse_ts_ms(r["ts"]), r)
        for r in parsed.lines
        if r["id"] not in parsed.planted_ids
    ]
    for category, ts_ms, report in background:
        near = {
            other["reporter"]
            for c, t, other in background
            if c == category
            and 0 <= t - ts_ms <= QUARTER_HOUR_MS
            and haversine_m(report["lat"], report["lon"], other["lat"], other["lon"]) <= 250
        }
        assert len(near) < 5


# ---------------------------------------------------------------- families


def test_true_items_are_5_to_12_independent_reporters_within_minutes_and_about_50_m(parsed):
    for item in parsed.family("true"):
        members = parsed.members(item)
        assert 5 <= item["independent"] <= 12
        assert _span_ms(members) <= 6 * 60_000
        assert item["radius_m"] <= 50
        assert _max_pairwise_m(members) <= 100
        assert item["expect"] == "incident"


def test_late_items_arrive_out_of_event_order_but_within_the_lateness(parsed):
    position = {r["id"]: n for n, r in enumerate(parsed.lines)}
    for item in parsed.family("late"):
        members = sorted(parsed.members(item), key=lambda r: position[r["id"]])
        times = [parse_ts_ms(r["ts"]) for r in members]
        assert times != sorted(times)
        assert item["independent"] >= 5 and item["radius_m"] <= 50
        internal = [r for r in parsed.sim.reports if r.id in set(item["report_ids"])]
        assert all(0 <= r.arrival_ms - r.ts_ms < LATENESS_MS for r in internal)
        # The earliest report is held back past later ones: really late, not just shuffled ids.
        assert max(r.arrival_ms - r.ts_ms for r in internal) > 30_000


def test_cell_edge_items_have_members_in_two_res10_and_two_res9_cells(parsed):
    for item in parsed.family("cell_edge"):
        members = parsed.members(item)
        cells10 = {h3.latlng_to_cell(r["lat"], r["lon"], 10) for r in members}
        cells9 = Counter(h3.latlng_to_cell(r["lat"], r["lon"], 9) for r in members)
        assert len(cells10) >= 2 and len(cells9) >= 2
        assert max(cells9.values()) <= 4  # no single res-9 cell sees the threshold
        assert item["independent"] >= 5 and _max_pairwise_m(members) <= 150


def test_window_edge_items_straddle_a_quarter_hour_boundary(parsed):
    for item in parsed.family("window_edge"):
        members = parsed.members(item)
        buckets = Counter(parse_ts_ms(r["ts"]) // QUARTER_HOUR_MS for r in members)
        assert len(buckets) == 2 and max(buckets.values()) <= 4
        assert _span_ms(members) <= 5 * 60_000
        assert item["independent"] >= 5 and item["radius_m"] <= 50


def test_close_pairs_are_two_simultaneous_incidents_about_600_m_apart(parsed):
    items = {i["id"]: i for i in parsed.family("close_pair")}
    assert len(items) == 2 * DEFAULT_FAMILY_COUNTS["close_pair"]
    for item in items.values():
        partner = items[item["pair"]]
        assert partner["pair"] == item["id"]
        assert partner["category"] == item["category"]
        assert 550 <= haversine_m(item["lat"], item["lon"], partner["lat"], partner["lon"]) <= 650
        assert item["start_ms"] <= partner["end_ms"] and partner["start_ms"] <= item["end_ms"]
        assert item["independent"] >= 5 and item["expect"] == "incident"


def test_staff_items_are_one_staff_report_expected_to_stay_silent(parsed):
    for item in parsed.family("staff"):
        (report,) = parsed.members(item)
        assert report["source"] == "staff"
        assert item["expect"] == "none" and "staff" in item["note"]


def test_decoys_have_the_shape_they_claim(parsed):
    for item in parsed.family("sub_threshold"):
        assert item["independent"] == 4 and item["reports"] == 4 and item["radius_m"] <= 50
    for item in parsed.family("repeater"):
        assert item["reports"] == 8 and item["reporters"] == 1 and item["independent"] == 1
    for item in parsed.family("shared_device"):
        members = parsed.members(item)
        assert item["reporters"] == 8 and len({r.get("device") for r in members}) == 1
        assert item["devices"] == 1 and item["independent"] == 1
    for item in parsed.family("trickle"):
        times = sorted(parse_ts_ms(r["ts"]) for r in parsed.members(item))
        assert item["independent"] == 5
        assert all(b - a >= 10.5 * 60_000 for a, b in itertools.pairwise(times))
        assert all(sum(1 for t in times if s <= t <= s + QUARTER_HOUR_MS) <= 2 for s in times)
    for item in parsed.family("scatter"):
        members = parsed.members(item)
        pairwise = [
            haversine_m(a["lat"], a["lon"], b["lat"], b["lon"])
            for a, b in itertools.combinations(members, 2)
        ]
        assert item["independent"] == 6
        assert min(pairwise) >= 500 and max(pairwise) <= 3000
    for family in ("staff", "sub_threshold", "repeater", "shared_device", "trickle", "scatter"):
        assert all(item["expect"] == "none" for item in parsed.family(family))


def test_a_surge_is_one_district_reporting_one_category_far_above_its_baseline(parsed):
    (item,) = parsed.family("surge")
    members = parsed.members(item)
    assert item["expect"] == "surge" and h3.get_resolution(item["region"]) == 6
    assert all(h3.latlng_to_cell(r["lat"], r["lon"], 6) == item["region"] for r in members)
    assert item["reports"] >= 60 and item["independent"] == item["reports"]
    assert _span_ms(members) <= 10 * 60_000
    assert item["rate_ratio"] >= 20
    assert {r.get("lang") for r in members} == {"en"}
    # Spread over the district, not piled in one spot.
    assert _max_pairwise_m(members) > 3000
    # Late enough in the stream for a long-term baseline to exist.
    assert item["start_ms"] >= parsed.sim.params.start_ms + 3 * 3_600_000


# ---------------------------------------------------------------- switches


def test_families_can_be_switched_off_and_counted():
    sim = simulate(SimParams(seed=4, hours=2, families=parse_families("none")))
    assert sim.truth == () and all(r.truth_id is None for r in sim.reports)
    sim = simulate(SimParams(seed=4, hours=2, families={"true": 2, "repeater": 1}))
    assert Counter(t.family for t in sim.truth) == {"true": 2, "repeater": 1}


def test_switching_a_family_off_leaves_the_other_families_as_they_were():
    full = simulate(SimParams(seed=5, hours=3, families={"true": 2, "scatter": 1}))
    alone = simulate(SimParams(seed=5, hours=3, families={"true": 2}))

    def shape(sim):
        return [
            (t.family, t.category, t.lat, t.lon, t.start_ms)
            for t in sim.truth
            if t.family == "true"
        ]

    assert shape(full) == shape(alone)


def test_parse_families_rejects_unknown_names_and_negative_counts():
    with pytest.raises(ValueError, match="FAMILY=COUNT"):
        parse_families("bogus=1")
    with pytest.raises(ValueError, match=">= 0"):
        parse_families("true=-1")
    assert parse_families("true=9")["true"] == 9
    assert parse_families("none,true=2") == {f: (2 if f == "true" else 0) for f in FAMILIES}


def test_a_stream_too_short_for_a_family_is_refused():
    with pytest.raises(ValueError, match="trickle"):
        simulate(SimParams(seed=1, hours=1, families={"trickle": 1}))
