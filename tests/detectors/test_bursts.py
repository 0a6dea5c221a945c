"""New-reporter bursts (detectors/bursts.py): many first-time reporters on many devices at one
spot within a minute are counted once, for an operator; nothing else changes."""

from __future__ import annotations

import random

import pytest

from geoincident.detectors import DetectorParams, Report
from geoincident.detectors.bursts import BurstParams, device_key
from geoincident.detectors.reputation import ReputationParams
from geoincident.geo import destination
from tests.builders import SPOT, T0_MS, Driven, opened, report

ELSEWHERE = destination(*SPOT, 45.0, 5000.0)
DAY_MINUTES = 24 * 60


def crowd(
    count: int,
    start_s: float,
    span_s: float,
    prefix: str,
    centre: tuple[float, float] = SPOT,
    device=None,
    reporter=None,
    category: str = "streetlight_out",
) -> list[Report]:
    """`count` reports evenly over [start, start + span) seconds after T0, within 50 m of
    `centre`; by default each from its own new reporter on its own phone."""
    rng = random.Random(prefix)
    reports = []
    for n in range(count):
        lat, lon = destination(*centre, rng.uniform(0, 360), rng.uniform(0, 50))
        reports.append(
            report(
                f"{prefix}{n}",
                (start_s + span_s * n / count) / 60.0,
                lat,
                lon,
                reporter=reporter(n) if reporter else f"{prefix}-user{n}",
                category=category,
                device=device(n) if device else f"{prefix}-phone{n}",
            )
        )
    return reports


def bursts_of(reports: list[Report], params: DetectorParams | None = None) -> list[dict]:
    driven = Driven(params)
    driven.feed(sorted(reports, key=lambda r: (r.ts_ms, r.id)))
    driven.flush()
    return [burst.log_fields() for burst in driven.detector.bursts.take()]


def test_a_burst_counts_once_however_long_it_goes_on_and_again_after_it_ended():
    first = crowd(40, 0, 30, "a")  # 40 new reporters within 30 s
    going_on = crowd(200, 30, 600, "b")  # then one every 3 s for 10 minutes
    # then 15 minutes of one new reporter every 2 minutes: below the burst's pace, it ends
    trickle = crowd(8, 630, 900, "c")
    again = crowd(12, 1560, 20, "d")  # 10 minutes after its last active time
    found = bursts_of(first + going_on + trickle + again)
    assert found == [
        {
            "category": "streetlight_out",
            "lat": found[0]["lat"],
            "lon": found[0]["lon"],
            "at": "2026-11-24T09:00:06.750Z",  # the tenth first-time reporter
            "reporters": 10,
            "devices": 10,
        },
        {**found[1], "at": "2026-11-24T09:26:15.000Z", "reporters": 10, "devices": 10},
    ]
    assert found[1]["category"] == "streetlight_out"


def test_thirty_first_time_reporters_over_a_day_at_one_spot_count_nothing():
    spread = crowd(30, 0, DAY_MINUTES * 60, "day")
    assert bursts_of(spread) == []
    # the same thirty within half a minute are one
    assert len(bursts_of(crowd(30, 0, 30, "day"))) == 1


def test_established_reporters_reporting_together_count_nothing():
    # forty reporters each reported once yesterday, half an hour apart: their reports left
    # their window alone, so the reputation tracker knows them
    known = [f"local{n}" for n in range(40)]
    yesterday = crowd(40, -DAY_MINUTES * 60, 40 * 1800, "y", reporter=lambda n: known[n])
    together = crowd(40, 0, 30, "t", reporter=lambda n: known[n])
    driven = Driven()
    events = driven.feed(yesterday + together) + driven.flush()
    assert driven.detector.bursts.take() == []
    assert opened(events), "they were heard: an incident opened"
    # forty others, new, at the same time elsewhere: a burst
    newcomers = crowd(40, 0, 30, "n", centre=ELSEWHERE)
    assert len(bursts_of(yesterday + sorted(together + newcomers, key=lambda r: r.ts_ms))) == 1


def test_many_accounts_on_few_devices_are_no_burst_unless_configured():
    # a Sybil flood: independence already counts it as three voices
    flood = crowd(40, 0, 30, "s", device=lambda n: f"dev-{n % 3}")
    assert bursts_of(flood) == []
    params = DetectorParams(bursts=BurstParams(min_devices=3))
    (found,) = bursts_of(flood, params)
    assert found["reporters"] == 10 and found["devices"] == 3


def test_new_accounts_without_device_ids_are_a_burst():
    # the flood independence cannot tell from people (docs/design.md, Known limits)
    flood = crowd(40, 0, 30, "x")
    for r in flood:
        r.device = None
    (found,) = bursts_of(flood)
    assert found["reporters"] == found["devices"] == 10


def test_blocked_reporters_and_devices_count_for_nothing():
    flood = crowd(40, 0, 30, "k")
    driven = Driven()
    for n in range(0, 40, 2):
        driven.detector.block(device=f"k-phone{n}")
    for n in range(1, 35, 2):
        driven.detector.block(reporter=f"k-user{n}")
    driven.feed(flood)
    driven.flush()
    assert driven.detector.bursts.take() == []  # 3 left


def test_the_numbers_come_from_the_config():
    reports = crowd(6, 0, 100, "p")  # six in 100 s
    assert bursts_of(reports) == []
    params = DetectorParams(bursts=BurstParams(min_reporters=6, min_devices=6, window_s=120))
    assert len(bursts_of(reports, params)) == 1
    assert bursts_of(crowd(40, 0, 30, "q"), DetectorParams(bursts=BurstParams(enabled=False))) == []
    # without reputation nobody is known, so nobody is new: bursts are off
    without = DetectorParams(reputation=ReputationParams(enabled=False))
    assert Driven(without).detector.bursts.on is False
    assert bursts_of(crowd(40, 0, 30, "q"), without) == []


def _city() -> list[Report]:
    """Two hours of a city: first-time reporters everywhere, two bursts, a crowd of
    established reporters, each report where it is."""
    rng = random.Random(3)
    reports = []
    for n in range(1500):
        lat, lon = destination(*SPOT, rng.uniform(0, 360), rng.uniform(0, 8000))
        category = rng.choice(["streetlight_out", "pothole", "road_flooding"])
        reports.append(report(f"bg{n}", rng.uniform(-60, 120), lat, lon, category=category))
    regulars = [f"regular{n}" for n in range(20)]
    reports += crowd(20, -3600, 3000, "old", centre=ELSEWHERE, reporter=lambda n: regulars[n])
    reports += crowd(20, 1800, 40, "reg", centre=ELSEWHERE, reporter=lambda n: regulars[n])
    reports += crowd(25, 600, 45, "b1")
    reports += crowd(100, 645, 600, "b1more")  # it goes on: one new reporter every 6 s
    reports += crowd(15, 3000, 50, "b2", centre=destination(*SPOT, 180.0, 3000.0))
    return sorted(reports, key=lambda r: (r.ts_ms, r.id))


def _run(batches: list[list[Report]], params: DetectorParams | None = None):
    driven = Driven(params)
    events = []
    for batch in batches:
        events += driven.feed(batch)
    events += driven.flush()
    return [b.log_fields() for b in driven.detector.bursts.take()], [e.to_json() for e in events]


def _cut(reports: list[Report], rng: random.Random) -> list[list[Report]]:
    batches, start = [], 0
    while start < len(reports):
        size = rng.choice([1, 2, 5, 17, 64, 300])
        batches.append(reports[start : start + size])
        start += size
    return batches


def test_bursts_are_the_same_whatever_the_batch_cuts_and_arrival_order():
    reports = _city()
    expected = _run([reports])
    assert len(expected[0]) == 2
    for seed in range(4):
        rng = random.Random(seed)
        shuffled = sorted(reports, key=lambda r: r.ts_ms + rng.uniform(0, 60_000))
        assert _run(_cut(shuffled, rng)) == expected


def test_a_burst_changes_no_decision():
    reports = _city()
    with_bursts = _run([reports])
    without = _run([reports], DetectorParams(bursts=BurstParams(enabled=False)))
    assert with_bursts[0] and without[0] == []
    assert with_bursts[1] == without[1]


@pytest.mark.parametrize("cut_s", [740, 1000, 3140])
def test_a_restart_neither_counts_a_burst_again_nor_forgets_one_under_way(cut_s):
    # Processing runs the lateness bound (120 s) behind what was read. 740 s: the first burst
    # just declared, its crowd still coming; 1000 s: while it goes on; 3140 s: the second
    # one under way (a few of its first reports processed), not declared yet
    reports = _city()
    expected = _run([reports])[0]
    cut_ms = T0_MS + cut_s * 1000
    before = [r for r in reports if r.ts_ms < cut_ms]
    after = [r for r in reports if r.ts_ms >= cut_ms]
    first = Driven()
    first.feed(before)
    found = [b.log_fields() for b in first.detector.bursts.take()]
    second = first.restart(before)
    second.feed(after)
    second.flush()
    found += [b.log_fields() for b in second.detector.bursts.take()]
    assert found == expected
    assert second.detector.bursts.counts == {"streetlight_out": 2}


def test_the_state_holds_about_a_window_of_first_reports():
    reports = crowd(3000, 0, 3000, "w")  # one a second for 50 minutes
    driven = Driven()
    driven.feed(reports)
    bursts = driven.detector.bursts
    # the sweep runs once a window: at most two windows' worth are held
    assert 0 < bursts.state_reports <= 2 * 60
    snapshot = bursts.snapshot()
    assert len(snapshot["recent"]) == bursts.state_reports and len(snapshot["on"]) == 1


def _held(bursts) -> list[tuple]:
    """The first reports the boxes hold, as snapshot rows, sorted."""
    return sorted(
        (category, r.ts_ms, r.id, r.lat, r.lon, r.reporter, device_key(r))
        for category, boxes in bursts._recent.items()
        for _, held in boxes.items()
        for r in _listed(held)
    )


def _listed(held) -> list:
    """What a box holds as a list: the report itself where it is alone, else its list."""
    return held if isinstance(held, list) else [held]


def test_a_snapshot_lists_exactly_the_held_reports_late_ones_included():
    """A snapshot lists the held reports from a record kept in processing order (so it does
    not sort them all): it must hold exactly what the boxes hold, through sweeps and late
    reports (processed behind the clock, out of event-time order), and again after a
    restore."""
    reports = _city()
    rng = random.Random(5)
    # up to 400 s out of order: beyond the lateness bound (120 s), so some are processed late
    shuffled = sorted(reports, key=lambda r: r.ts_ms + rng.uniform(0, 400_000))
    driven = Driven()
    out_of_order = 0
    for batch in _cut(shuffled, rng):
        driven.feed(batch)
        bursts = driven.detector.bursts
        assert sorted(tuple(row) for row in bursts.snapshot()["recent"]) == _held(bursts)
        assert bursts.state_reports == len(_held(bursts))
        out_of_order += bool(bursts._late)
    assert out_of_order > 0
    snapshot = bursts.snapshot()
    again = Driven()
    again.detector.bursts.restore(snapshot)
    assert again.detector.bursts.snapshot() == snapshot
    assert _held(again.detector.bursts) == _held(bursts)
