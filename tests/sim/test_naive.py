"""The naive baseline: one res-9 cell, a 15-min tumbling bucket, five reporters."""

from __future__ import annotations

from collections import Counter

import orjson

from geoincident.sim.common import format_ts_utc, offset_m, parse_ts_ms
from geoincident.sim.evaluate import evaluate, load_truth
from geoincident.sim.naive import naive_loop, run_naive
from geoincident.sim.simulate import SimParams, report_to_json, simulate, truth_to_json

T0_MS = parse_ts_ms("2026-11-24T09:01:00Z")
# Middle of an H3 res-9 cell, so a few metres of spread stay inside it.
LAT, LON = 47.6101, -122.3321


def line(n: int, reporter: str, *, ts_ms: int, north_m: float = 0.0, **extra) -> bytes:
    lat, lon = offset_m(LAT, LON, north_m, 0.0)
    report = {
        "id": f"r{n}",
        "ts": format_ts_utc(ts_ms),
        "lat": lat,
        "lon": lon,
        "reporter": reporter,
        "tags": ["#StreetLightOut"],
        **extra,
    }
    return orjson.dumps(report)


def test_five_reporters_in_one_cell_and_bucket_open_one_contract_shaped_incident():
    lines = [line(n, f"u{n}", ts_ms=T0_MS + n * 30_000) for n in range(7)]
    (event,) = run_naive(lines)
    assert event["event"] == "opened" and event["kind"] == "local" and event["schema"] == 1
    assert event["category"] == "streetlight_out"
    assert event["validated_at"] == format_ts_utc(T0_MS + 4 * 30_000)
    assert event["first_report_at"] == format_ts_utc(T0_MS)
    assert event["report_count"] == 5 and event["independent_reporters"] == 5
    for key in ("incident_id", "lat", "lon", "last_report_at", "emitted_at"):
        assert key in event


def test_four_reporters_or_one_reporter_five_times_open_nothing():
    assert run_naive([line(n, f"u{n}", ts_ms=T0_MS + n * 1000) for n in range(4)]) == []
    assert run_naive([line(n, "same", ts_ms=T0_MS + n * 1000) for n in range(6)]) == []


def test_a_quarter_hour_boundary_splits_what_the_naive_bucket_sees():
    boundary_ms = parse_ts_ms("2026-11-24T09:15:00Z")
    times = [
        boundary_ms - 60_000,
        boundary_ms - 30_000,
        boundary_ms,
        boundary_ms + 30_000,
        boundary_ms + 60_000,
    ]
    assert run_naive([line(n, f"u{n}", ts_ms=t) for n, t in enumerate(times)]) == []


def test_bad_lines_and_unclassified_reports_are_skipped():
    lines = [b"not json", b'{"id": "x"}', line(9, "u9", ts_ms=T0_MS, tags=["#nothing"])]
    lines[-1] = orjson.dumps({**orjson.loads(lines[-1]), "tags": ["#nothing"]})
    assert run_naive(lines) == []


def test_the_bare_loop_counts_what_run_naive_returns():
    sim = simulate(SimParams(seed=2))
    lines = [orjson.dumps(report_to_json(r)) for r in sim.reports]
    assert naive_loop(lines) == len(run_naive(lines)) > 0
    assert naive_loop(b.decode() for b in lines) == naive_loop(lines)


def test_on_a_simulated_city_the_naive_baseline_misses_edges_and_falls_for_shared_devices(tmp_path):
    hit_families: Counter[str] = Counter()
    for seed in (1, 2, 3):
        sim = simulate(SimParams(seed=seed))
        truth_path = tmp_path / f"truth{seed}.json"
        truth_path.write_bytes(orjson.dumps(truth_to_json(sim)))
        events = run_naive(orjson.dumps(report_to_json(r)) for r in sim.reports)
        result = evaluate(events, load_truth(truth_path))
        hit_families.update({f.family: f.detected for f in result.families})
    assert hit_families["cell_edge"] == 0 and hit_families["window_edge"] == 0
    assert hit_families["repeater"] == 0 and hit_families["trickle"] == 0
    assert hit_families["shared_device"] > 0
    assert hit_families["true"] > 0
