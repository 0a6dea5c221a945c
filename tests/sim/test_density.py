"""Busy cities: background per minute, hot spots, the daily cycle and the outbreak; and the
sparse default city left exactly as it was."""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter

import h3
import orjson
import pytest

from geoincident.sim.common import haversine_m, offset_m, parse_ts_ms
from geoincident.sim.simulate import (
    CITY_CYCLE,
    DOWNTOWN_RADIUS_M,
    NIGHTLIFE_CYCLE,
    NIGHTLIFE_LENGTH_M,
    NIGHTLIFE_WIDTH_M,
    OUTBREAK_FAMILY,
    HotspotArea,
    OptionError,
    Outbreak,
    SimParams,
    Simulation,
    hotspot_areas,
    parse_families,
    parse_hotspots,
    parse_outbreak,
    report_to_json,
    simulate,
    truth_to_json,
)
from geoincident.sim.taxonomy import CATEGORY_NAMES, UNCLASSIFIED, resolve_category

HOUR_MS = 3_600_000
NONE = parse_families("none")
# GPS fixes scatter up to a report's accuracy (<= 40 m) around its true position.
GPS_MARGIN_M = 45.0


def _jsonl(sim: Simulation) -> bytes:
    return b"".join(orjson.dumps(report_to_json(r)) + b"\n" for r in sim.reports)


def _truth_bytes(sim: Simulation) -> bytes:
    # As `geoincident simulate` writes it.
    return orjson.dumps(truth_to_json(sim), option=orjson.OPT_INDENT_2)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _within_poisson(count: int, expected: float, sigmas: float = 4.0) -> bool:
    return abs(count - expected) <= sigmas * math.sqrt(expected)


# ---------------------------------------------------------------- the sparse city is unchanged

# Recorded before the busy-city options existed: the sparse quality tables depend on these bytes.
SPARSE_MD5 = {
    "seed 1, 2 h": ("682c22677715a301bb1b2dbaf5373136", "a75406ba50925d3b2f61d18233ec84a6"),
    "seed 1, 1 h, none,true=1": (
        "efca0bf5dcc8f49d8a10f48a94842ca3",
        "0d0a37d34861d8df51c1107471706bcc",
    ),
}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        # hours as the command line passes them: a float, written as 2.0 in the truth.
        ("seed 1, 2 h", SimParams(seed=1, hours=2.0)),
        ("seed 1, 1 h, none,true=1", SimParams(seed=1, hours=1.0, families={"true": 1})),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_without_the_busy_options_the_output_is_the_recorded_bytes(name, params):
    sim = simulate(params)
    assert (_md5(_jsonl(sim)), _md5(_truth_bytes(sim))) == SPARSE_MD5[name]
    doc = truth_to_json(sim)
    assert not {"background_per_min", "hotspots", "daily_cycle", "outbreak"} & doc.keys()
    assert OUTBREAK_FAMILY not in doc["counts"]


def test_busy_options_leave_the_planted_families_where_they_were():
    def planted(sim: Simulation) -> list[tuple]:
        # Not the report counts: a surge scales with the background it must stand out from.
        return [(t.id, t.family, t.category, t.lat, t.lon, t.start_ms) for t in sim.truth]

    sparse = simulate(SimParams(seed=6, hours=3))
    busy = simulate(
        SimParams(
            seed=6,
            hours=3,
            background_per_min=60,
            hotspots=parse_hotspots("downtown,nightlife"),
            daily_cycle=True,
        )
    )
    assert planted(busy) == planted(sparse)
    # Hot-spot and cycle reports are background: no report of them claims a truth.
    members = sum(t.reports for t in busy.truth)
    assert sum(1 for r in busy.reports if r.truth_id is not None) == members
    assert len(busy.reports) > 5 * len(sparse.reports)


# ---------------------------------------------------------------- background per minute


def test_background_per_min_is_the_total_rate_split_evenly_and_wins_over_the_hourly_rate():
    params = SimParams(
        seed=3, hours=1, families=NONE, background_per_min=120, background_per_hour=9999
    )
    assert all(params.background_rate(c) == 900 for c in CATEGORY_NAMES)
    sim = simulate(params)
    per_category = Counter(resolve_category(report_to_json(r)) for r in sim.reports)
    unclassified = per_category.pop(UNCLASSIFIED, 0)
    assert _within_poisson(sum(per_category.values()), 120 * 60)
    assert set(per_category) == set(CATEGORY_NAMES)
    assert all(_within_poisson(n, 900) for n in per_category.values()), per_category
    assert unclassified <= 10  # the unclassified noise keeps its own small rate
    doc = truth_to_json(sim)
    assert doc["background_per_min"] == 120.0
    assert set(doc["background_per_hour"].values()) == {900.0}


def test_background_per_min_zero_is_a_city_without_categorised_background():
    sim = simulate(SimParams(seed=3, hours=1, families=NONE, background_per_min=0))
    assert all(resolve_category(report_to_json(r)) == UNCLASSIFIED for r in sim.reports)


# ---------------------------------------------------------------- hot spots


def _density_per_km2(sim: Simulation, inside, area_km2: float) -> float:
    return sum(1 for r in sim.reports if inside(r.lat, r.lon)) / area_km2


def test_downtown_is_a_disk_where_background_runs_five_times_the_city_rate():
    params = SimParams(
        seed=4,
        hours=1,
        families=NONE,
        background_per_min=300,
        hotspots=parse_hotspots("downtown"),
    )
    (downtown,) = hotspot_areas(params)
    assert downtown.shape == "disk" and downtown.radius_m == DOWNTOWN_RADIUS_M
    assert downtown.factor == 5.0
    assert params.bbox.shrink_m(DOWNTOWN_RADIUS_M).contains(downtown.lat, downtown.lon)
    sim = simulate(params)
    core_m = DOWNTOWN_RADIUS_M - 100

    def inside(lat: float, lon: float) -> bool:
        return haversine_m(downtown.lat, downtown.lon, lat, lon) <= core_m

    def outside(lat: float, lon: float) -> bool:
        return haversine_m(downtown.lat, downtown.lon, lat, lon) > DOWNTOWN_RADIUS_M + 100

    core_km2 = math.pi * core_m**2 / 1e6
    outer_km2 = params.bbox.area_km2() - math.pi * (DOWNTOWN_RADIUS_M + 100) ** 2 / 1e6
    ratio = _density_per_km2(sim, inside, core_km2) / _density_per_km2(sim, outside, outer_km2)
    assert 4.5 <= ratio <= 5.5, ratio
    assert all(r.truth_id is None for r in sim.reports)


def test_hot_spot_places_depend_on_the_seed_only_and_the_street_stays_out_of_downtown():
    both = hotspot_areas(SimParams(seed=9, hotspots=parse_hotspots("downtown,nightlife")))
    alone = hotspot_areas(SimParams(seed=9, hotspots=parse_hotspots("nightlife")))
    downtown, street = both
    assert alone == (street,)
    assert hotspot_areas(SimParams(seed=10, hotspots=parse_hotspots("downtown")))[0] != downtown
    for end in (-1, 1):
        along_m = end * street.length_m / 2
        bearing = math.radians(street.bearing_deg)
        lat, lon = offset_m(
            street.lat, street.lon, along_m * math.cos(bearing), along_m * math.sin(bearing)
        )
        assert haversine_m(downtown.lat, downtown.lon, lat, lon) > DOWNTOWN_RADIUS_M
        assert SimParams().bbox.contains(lat, lon)


def test_the_nightlife_street_is_a_thin_strip_one_and_a_half_km_long():
    (street,) = hotspot_areas(SimParams(seed=2, hotspots=parse_hotspots("nightlife")))
    assert street.shape == "strip" and street.factor == 10.0
    assert (street.length_m, street.width_m) == (NIGHTLIFE_LENGTH_M, NIGHTLIFE_WIDTH_M)
    assert 60 <= street.width_m <= 80 and street.area_km2() == pytest.approx(0.105)
    rng = random.Random(1)
    points = [street.sample(rng) for _ in range(3000)]
    assert all(street.contains(lat, lon, margin_m=0.01) for lat, lon in points)
    # It fills the whole length: points near both ends, ~1.5 km apart.
    span_m = max(haversine_m(*a, *b) for a in points[:300] for b in points[:300])
    assert 1400 <= span_m <= 1510
    # Thin: a point pushed 50 m sideways has left it.
    bearing = math.radians(street.bearing_deg + 90)
    lat, lon = offset_m(street.lat, street.lon, 50 * math.cos(bearing), 50 * math.sin(bearing))
    assert not street.contains(lat, lon)


def _moved_sideways(street: HotspotArea, by_m: float, params: SimParams) -> HotspotArea:
    """The same street ``by_m`` to one side, wholly inside the box: the city's own density."""
    for side in (1, -1):
        bearing = math.radians(street.bearing_deg + 90 * side)
        lat, lon = offset_m(
            street.lat, street.lon, by_m * math.cos(bearing), by_m * math.sin(bearing)
        )
        moved = HotspotArea(
            "control",
            1.0,
            "strip",
            lat,
            lon,
            length_m=street.length_m,
            width_m=street.width_m,
            bearing_deg=street.bearing_deg,
        )
        along = math.radians(street.bearing_deg)
        half_m = street.length_m / 2 + 100
        ends = [
            offset_m(lat, lon, end * half_m * math.cos(along), end * half_m * math.sin(along))
            for end in (-1, 1)
        ]
        if all(params.bbox.contains(*end) for end in ends):
            return moved
    raise AssertionError("no room beside the street")


def test_the_nightlife_street_gets_ten_times_the_city_density():
    params = SimParams(
        seed=5,
        hours=1,
        families=NONE,
        background_per_min=1000,
        hotspots=parse_hotspots("nightlife"),
    )
    (street,) = hotspot_areas(params)
    control = _moved_sideways(street, 1000, params)
    sim = simulate(params)
    on_street = sum(1 for r in sim.reports if street.contains(r.lat, r.lon, GPS_MARGIN_M))
    nearby = sum(1 for r in sim.reports if control.contains(r.lat, r.lon, GPS_MARGIN_M))
    city_per_km2 = 1000 * 60 / params.bbox.area_km2()
    widened_km2 = (street.length_m + 2 * GPS_MARGIN_M) * (street.width_m + 2 * GPS_MARGIN_M) / 1e6
    expected = city_per_km2 * (9 * street.area_km2() + widened_km2)
    assert _within_poisson(on_street, expected), (on_street, expected)
    assert _within_poisson(nearby, city_per_km2 * widened_km2), nearby
    assert on_street > 3 * nearby


def test_parse_hotspots_takes_names_and_optional_factors():
    assert [(h.name, h.factor) for h in parse_hotspots("downtown, nightlife")] == [
        ("downtown", 5.0),
        ("nightlife", 10.0),
    ]
    assert parse_hotspots("downtown=8")[0].factor == 8.0
    assert parse_hotspots("") == ()
    with pytest.raises(ValueError, match="NAME"):
        parse_hotspots("uptown")
    with pytest.raises(ValueError, match=">= 1"):
        parse_hotspots("downtown=0.5")
    with pytest.raises(ValueError, match="twice"):
        parse_hotspots("downtown,downtown=3")


# ---------------------------------------------------------------- the daily cycle


def test_the_cycles_are_smooth_days_with_mean_one():
    day_ms = 24 * HOUR_MS
    for cycle in (CITY_CYCLE, NIGHTLIFE_CYCLE):
        samples = [cycle.factor(k * 60_000) for k in range(24 * 60)]
        assert sum(samples) / len(samples) == pytest.approx(1.0, abs=1e-3)
        assert cycle.factor(round(cycle.low_hour * HOUR_MS)) == pytest.approx(cycle.low)
        assert cycle.factor(round(cycle.high_hour * HOUR_MS)) == pytest.approx(cycle.high)
        # The same hour on another day gives the same factor.
        assert cycle.factor(5 * day_ms + 7 * HOUR_MS) == pytest.approx(cycle.factor(7 * HOUR_MS))
        # No jumps: neighbouring minutes differ little.
        steps = [abs(a - b) for a, b in zip(samples, samples[1:] + samples[:1], strict=True)]
        assert max(steps) < 0.01
    assert CITY_CYCLE.factor(4 * HOUR_MS) == pytest.approx(0.35)
    assert CITY_CYCLE.factor(18 * HOUR_MS) == pytest.approx(1.65)
    assert NIGHTLIFE_CYCLE.factor(23 * HOUR_MS) > 1.5 > 0.5 > NIGHTLIFE_CYCLE.factor(11 * HOUR_MS)


def test_a_daily_cycle_day_is_busier_in_the_evening_than_at_4_am_and_keeps_its_total():
    rate_per_min = 20
    params = SimParams(
        seed=8,
        start_ms=parse_ts_ms("2026-11-24T00:00:00Z"),
        hours=24,
        families=NONE,
        background_per_min=rate_per_min,
        unclassified_per_hour=0,
        daily_cycle=True,
    )
    sim = simulate(params)
    per_hour = Counter((r.ts_ms - params.start_ms) // HOUR_MS for r in sim.reports)
    assert per_hour[18] > 3 * per_hour[4]
    assert per_hour[17] + per_hour[18] + per_hour[19] > 3 * (
        per_hour[3] + per_hour[4] + per_hour[5]
    )
    assert _within_poisson(len(sim.reports), rate_per_min * 60 * 24)
    # Every hour follows the curve (an inhomogeneous Poisson process, thinned).
    for hour in range(24):
        expected = sum(
            rate_per_min * CITY_CYCLE.factor(params.start_ms + hour * HOUR_MS + m * 60_000)
            for m in range(60)
        )
        assert _within_poisson(per_hour[hour], expected, sigmas=4.5), (hour, per_hour[hour])


@pytest.mark.slow
def test_the_nightlife_street_is_busiest_at_night_with_the_cycle():
    params = SimParams(
        seed=8,
        start_ms=parse_ts_ms("2026-11-24T00:00:00Z"),
        hours=24,
        families=NONE,
        background_per_min=100,
        unclassified_per_hour=0,
        hotspots=parse_hotspots("nightlife"),
        daily_cycle=True,
    )
    (street,) = hotspot_areas(params)
    sim = simulate(params)
    hours = Counter(
        (r.ts_ms - params.start_ms) // HOUR_MS
        for r in sim.reports
        if street.contains(r.lat, r.lon, GPS_MARGIN_M)
    )
    night = hours[21] + hours[22] + hours[23]
    late_morning = hours[9] + hours[10] + hours[11]
    assert night > 3 * late_morning, hours


# ---------------------------------------------------------------- the outbreak


@pytest.fixture(scope="module")
def outbreak_sim() -> Simulation:
    return simulate(
        SimParams(
            seed=5,
            hours=3,
            background_per_min=60,
            outbreak=Outbreak("power_outage", 2000, 10.0),
        )
    )


def test_the_outbreak_is_one_truth_of_fresh_reporters_over_its_disk(outbreak_sim):
    sim = outbreak_sim
    doc = truth_to_json(sim)
    (item,) = [i for i in doc["items"] if i["family"] == OUTBREAK_FAMILY]
    assert item["expect"] == "surge" and item["category"] == "power_outage"
    assert item["reports"] == item["reporters"] == item["independent"] == 2000
    assert doc["counts"][OUTBREAK_FAMILY] == 1
    assert doc["outbreak"] == {
        "category": "power_outage",
        "count": 2000,
        "minutes": 10.0,
        "radius_m": 2500.0,
    }
    # Planted last: the families keep their truth ids.
    assert doc["items"][-1] is item
    members = [r for r in sim.reports if r.truth_id == item["id"]]
    assert {r.lang for r in members} == {"en"}
    assert all(resolve_category(report_to_json(r)) == "power_outage" for r in members)
    distances = [haversine_m(item["lat"], item["lon"], r.lat, r.lon) for r in members]
    assert max(distances) <= 2500 + 40
    assert item["radius_m"] == pytest.approx(max(distances), abs=0.1)
    # Spread over the whole disk, not piled at its centre.
    assert sum(1 for d in distances if d > 1250) > 0.6 * len(distances)
    # Within its minutes, in the second half, ending 10 min or more before the stream does.
    params = sim.params
    assert item["end_ms"] - item["start_ms"] <= 10 * 60_000
    assert item["start_ms"] >= params.start_ms + (params.end_ms - params.start_ms) // 2
    assert item["end_ms"] <= params.end_ms - 10 * 60_000


def test_the_outbreak_region_lists_the_res6_cells_it_reaches_at_least_two(outbreak_sim):
    item = next(t for t in outbreak_sim.truth if t.family == OUTBREAK_FAMILY)
    regions = item.region.split(",")
    assert regions == sorted(set(regions)) and len(regions) >= 2
    assert all(h3.get_resolution(cell) == 6 for cell in regions)
    members = [r for r in outbreak_sim.reports if r.truth_id == item.id]
    counts = Counter(h3.latlng_to_cell(r.lat, r.lon, 6) for r in members)
    assert set(counts) == set(regions)
    # Centred where cells meet: at least two of them hold a real share of it.
    assert sum(1 for n in counts.values() if n >= 0.15 * len(members)) >= 2


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_seed_places_the_outbreak_across_res6_cells(seed):
    sim = simulate(
        SimParams(seed=seed, hours=1, families=NONE, outbreak=Outbreak("gas_leak", 300, 5.0))
    )
    (item,) = sim.truth
    assert len(item.region.split(",")) >= 2


def test_planted_items_of_its_category_keep_out_of_the_outbreak(outbreak_sim):
    outbreak = next(t for t in outbreak_sim.truth if t.family == OUTBREAK_FAMILY)
    for item in outbreak_sim.truth:
        if item is outbreak or item.category != outbreak.category:
            continue
        apart_ms = max(item.start_ms - outbreak.end_ms, outbreak.start_ms - item.end_ms)
        distance_m = haversine_m(item.lat, item.lon, outbreak.lat, outbreak.lon)
        assert apart_ms > 60 * 60_000 or distance_m > 2500 + 1000, item.id


def test_the_surge_family_keeps_away_from_an_outbreak_of_its_category():
    for seed in range(1, 9):
        probe = simulate(SimParams(seed=seed, hours=2, families={"surge": 1}))
        (surge,) = probe.truth
        sim = simulate(
            SimParams(
                seed=seed,
                hours=2,
                families={"surge": 1},
                outbreak=Outbreak(surge.category, 200, 10.0),
            )
        )
        surge, outbreak = sim.truth
        assert surge.family == "surge" and outbreak.family == OUTBREAK_FAMILY
        assert surge.region not in outbreak.region.split(",")
        # The rule that keeps planted items apart: radii plus 1 km (both fall in one hour here).
        circumradius_m = max(
            haversine_m(surge.lat, surge.lon, *vertex)
            for vertex in h3.cell_to_boundary(surge.region)
        )
        distance_m = haversine_m(surge.lat, surge.lon, outbreak.lat, outbreak.lon)
        assert distance_m >= circumradius_m + 2500 + 1000


def test_parse_outbreak_and_its_errors():
    assert parse_outbreak("power_outage:5000:10") == Outbreak("power_outage", 5000, 10.0)
    assert parse_outbreak("gas_leak:50:2.5:800").radius_m == 800.0
    for spec, match in [
        ("power_outage:5000", "CATEGORY:COUNT:MINUTES"),
        ("bogus:5:10", "not one of"),
        ("gas_leak:many:10", "integer"),
        ("gas_leak:0:10", "> 0"),
        ("gas_leak:5:0", "> 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_outbreak(spec)


def test_an_outbreak_that_does_not_fit_names_the_option():
    with pytest.raises(OptionError, match="does not fit") as raised:
        simulate(SimParams(seed=1, hours=0.5, families=NONE, outbreak=Outbreak("pothole", 9, 10)))
    assert raised.value.option == "--outbreak"


# ---------------------------------------------------------------- dense streams stay sound


@pytest.mark.slow
def test_dense_background_still_keeps_away_from_planted_items():
    sim = simulate(SimParams(seed=2, hours=2, background_per_min=300))
    planted_ids = {r.id for r in sim.reports if r.truth_id is not None}
    background = [r for r in sim.reports if r.id not in planted_ids]
    categories = [resolve_category(report_to_json(r)) for r in background]
    for item in sim.truth:
        if item.family == "surge":
            continue
        for report, category in zip(background, categories, strict=True):
            if category != item.category:
                continue
            if item.start_ms - 1_800_000 <= report.ts_ms <= item.end_ms + 1_800_000:
                distance_m = haversine_m(item.lat, item.lon, report.lat, report.lon)
                assert distance_m >= item.radius_m + 500


@pytest.mark.slow
def test_a_thousand_reports_a_minute_for_six_hours_generates_well_within_a_minute():
    started = time.perf_counter()
    sim = simulate(SimParams(seed=11, hours=6, background_per_min=1000))
    elapsed_s = time.perf_counter() - started
    assert elapsed_s < 45, elapsed_s
    background = [r for r in sim.reports if r.truth_id is None]
    assert _within_poisson(len(background), 1000 * 60 * 6 + 2 * 6)
    # Reporters are reused about one time in ten, as in the sparse city.
    reused = len(background) - len({r.reporter for r in background})
    assert 0.07 < reused / len(background) < 0.13
