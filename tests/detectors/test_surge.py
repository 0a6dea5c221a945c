"""Surges (DESIGN "Surge", CONTRACT §2 `kind: surge`): a district far above its own baseline."""

import pickle
import random

import h3
import pytest

from geoincident.detectors import Report
from geoincident.detectors.held import FIELDS
from geoincident.detectors.surge import SurgeDetector, SurgeParams, language_of
from geoincident.detectors.timefmt import parse_rfc3339_ms
from geoincident.geo import cell_of, region_polygon
from tests.builders import MINUTE_MS, SPOT, T0_MS
from tests.detectors.test_detection import CONTRACT_FIELDS

REGION = cell_of(SPOT[0], SPOT[1], 6)
OTHER_REGION = cell_of(47.0, -120.0, 6)  # far away: only there to start the detector's clock
CATEGORY = "power_outage"
HOUR_MS = 60 * MINUTE_MS


def points_in(region: str, rng: random.Random) -> tuple[float, float]:
    boundary = h3.cell_to_boundary(region)
    lats = [lat for lat, _ in boundary]
    lons = [lon for _, lon in boundary]
    while True:
        lat = rng.uniform(min(lats), max(lats))
        lon = rng.uniform(min(lons), max(lons))
        if cell_of(lat, lon, 6) == region:
            return lat, lon


def burst(
    count: int,
    start_ms: int,
    span_ms: int,
    prefix: str,
    *,
    lang: str | None = "en",
    region: str = REGION,
    category: str = CATEGORY,
    reporter=None,
    device=None,
    seed: int = 1,
) -> list[Report]:
    """`count` reports evenly over [start, start + span) at random places in `region`."""
    rng = random.Random(f"{seed}/{prefix}")
    reports = []
    for n in range(count):
        lat, lon = points_in(region, rng)
        reports.append(
            Report(
                id=f"{prefix}-{n}",
                ts_ms=start_ms + n * span_ms // count,
                lat=lat,
                lon=lon,
                reporter=reporter(n) if reporter else f"{prefix}-user{n}",
                category=category,
                source="app" if n % 3 else "twitter",
                device=device(n) if device else None,
                lang=lang,
            )
        )
    return reports


def background(
    per_min: float, start_ms: int, end_ms: int, prefix: str = "bg", seed: int = 7, **fields
) -> list[Report]:
    """A Poisson stream of `per_min` reports a minute in the region."""
    rng = random.Random(f"{seed}/{prefix}")
    times = []
    ts_ms = start_ms
    while True:
        ts_ms += max(1, round(rng.expovariate(per_min) * MINUTE_MS))
        if ts_ms >= end_ms:
            break
        times.append(ts_ms)
    reports = []
    for n, ts_ms in enumerate(times):
        reports.extend(burst(1, ts_ms, 1, f"{prefix}{n}", seed=seed, **fields))
    return reports


def clock_start(at_ms: int) -> Report:
    """One report elsewhere: the detector has seen event time from here on (its history)."""
    return Report(
        id=f"start-{at_ms}",
        ts_ms=at_ms,
        lat=47.0,
        lon=-120.0,
        reporter="starter",
        category="pothole",
    )


def run(reports, params=None, until_ms=None):
    detector = SurgeDetector(params)
    ordered = sorted(reports, key=lambda r: (r.ts_ms, r.id))
    events = detector.observe_many(ordered)
    if until_ms is not None:
        events.extend(detector.advance(until_ms))
    events.extend(detector.flush())
    return detector, events


def of(events, name):
    return [event for event in events if event.event == name]


def test_a_district_at_20x_background_for_10_minutes_opens_exactly_one_surge():
    start = T0_MS
    reports = [
        clock_start(start - 3 * HOUR_MS),
        *background(0.3, start - 3 * HOUR_MS, start + HOUR_MS),
        *burst(60, start, 10 * MINUTE_MS, "s"),  # 6/min: 20x the 0.3/min background
    ]
    _, events = run(reports)
    opened = of(events, "opened")
    assert len(opened) == 1
    event = opened[0]
    body = event.to_dict()
    assert set(body) >= CONTRACT_FIELDS | {"status", "surge"}
    assert body["schema"] == 1 and body["version"] == 1
    assert body["kind"] == "surge" and body["category"] == CATEGORY
    assert body["status"] == "open" and "resolved_reason" not in body
    assert body["incident_id"].startswith("srg-") and len(body["incident_id"]) == 4 + 16
    assert body["cells"] == [REGION]
    assert body["geometry"] == region_polygon(REGION)
    assert cell_of(body["lat"], body["lon"], 6) == REGION
    assert body["h3_cell"] == cell_of(body["lat"], body["lon"], 10)
    assert 3_000 < body["radius_m"] < 5_000  # a res-6 hexagon's circumradius, ~3.7 km
    assert body["jurisdiction"] is None
    assert body["emitted_at"] == body["validated_at"]
    assert body["first_report_at"] <= body["validated_at"] == body["last_report_at"]
    assert body["report_count"] >= 30 and body["independent_reporters"] >= 10
    assert len(body["report_ids"]) == body["report_count"]
    assert sum(body["sources"].values()) == body["report_count"]
    surge = body["surge"]
    assert set(surge) == {
        "region",
        "regions",
        "rate_per_min",
        "baseline_per_min",
        "ratio",
        "window_s",
        "lang",
    }
    assert surge["regions"] == [REGION]
    assert surge["region"] == REGION and surge["window_s"] == 300 and surge["lang"] == "en"
    assert 0.15 < surge["baseline_per_min"] < 0.5  # the background's 0.3/min, estimated
    assert surge["ratio"] >= 8.0
    assert surge["ratio"] == pytest.approx(surge["rate_per_min"] / surge["baseline_per_min"], 0.01)
    assert body["score"] == surge["ratio"]
    assert 0.75 <= body["confidence"] <= 1.0
    # one incident: later events continue it, one version at a time, updates >= 60 s apart
    mine = [e for e in events if e.incident_id == event.incident_id]
    assert [e.version for e in mine] == list(range(1, len(mine) + 1))
    assert all(e.kind == "surge" for e in events)
    updates = [e.emitted_at for e in of(mine, "updated")]
    assert updates, "the surge kept growing after it opened"
    stamps = [parse_rfc3339_ms(stamp) for stamp in [event.emitted_at, *updates]]
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
    assert min(gaps) >= MINUTE_MS
    # growth inside the interval is emitted by a timer at its due time, not by a report
    assert any(e.trigger_report_id is None for e in of(mine, "updated"))


def test_the_same_count_spread_over_6_hours_opens_nothing():
    reports = [clock_start(T0_MS - HOUR_MS), *burst(60, T0_MS, 6 * HOUR_MS, "slow")]
    _, events = run(reports)
    assert events == []


@pytest.mark.parametrize(
    "identity",
    [
        {"reporter": lambda n: "bot"},  # one account posting 60 times
        {"device": lambda n: f"farm-{n % 3}"},  # 60 accounts on three devices
    ],
    ids=["one_account", "three_devices"],
)
def test_a_burst_from_fewer_independent_reporters_than_min_independent_opens_nothing(identity):
    reports = [clock_start(T0_MS - HOUR_MS), *burst(60, T0_MS, 10 * MINUTE_MS, "bot", **identity)]
    _, events = run(reports)
    assert events == []


def test_steady_background_for_24_hours_opens_nothing_even_from_a_cold_start():
    # A busy district (4/min: 20 reports a window) from the very first minute the detector sees:
    # the bias-corrected baseline knows its rate after the warm-up instead of starting at ~0.
    end = T0_MS + 24 * HOUR_MS
    reports = background(4.0, T0_MS, end, prefix="busy")
    reports += background(0.2, T0_MS, end, prefix="quiet", region=OTHER_REGION)
    detector, events = run(reports, until_ms=end)
    assert events == []
    assert detector.state_keys == 2


def test_two_languages_are_judged_apart():
    start = T0_MS
    primed = [clock_start(start - HOUR_MS)]
    # 60 English + 20 Spanish reports: one surge, in English only (80 together would not matter)
    _, events = run(
        [*primed, *burst(60, start, 600_000, "en"), *burst(20, start, 600_000, "es", lang="es")]
    )
    opened = of(events, "opened")
    assert [e.surge["lang"] for e in opened] == ["en"]
    assert not any(rid.startswith("es-") for e in events for rid in e.report_ids)
    # 25 + 25 in two languages: each under min_count, so no surge though 50 together would be
    _, events = run(
        [*primed, *burst(25, start, 300_000, "a"), *burst(25, start, 300_000, "b", lang="fr")]
    )
    assert events == []
    # both languages surging: one outbreak, so one surge, which the second language joins
    reports = [
        *primed,
        *burst(60, start, 600_000, "us", lang="en-US"),
        *burst(60, start, 600_000, "es", lang="es"),
    ]
    _, events = run(reports)
    opened = of(events, "opened")
    assert len(opened) == 1 and opened[0].surge["lang"] in {"en", "es"}
    assert {e.incident_id for e in events} == {opened[0].incident_id}
    last = events[-1]
    assert any(rid.startswith("us-") for rid in last.report_ids)
    assert any(rid.startswith("es-") for rid in last.report_ids)


def test_a_surge_resolves_once_the_rate_falls_back_and_not_before():
    start = T0_MS
    reports = [clock_start(start - HOUR_MS), *burst(60, start, 10 * MINUTE_MS, "s")]
    _, events = run(reports, until_ms=start + 3 * HOUR_MS)
    (opened,) = of(events, "opened")
    (resolved,) = of(events, "resolved")
    assert resolved.incident_id == opened.incident_id
    assert resolved.status == "resolved" and resolved.resolved_reason == "quiet"
    assert resolved.version == max(e.version for e in events)
    # one report every 10 s: under min_count / 2 = 15 in the window from 12:30 on, calm at the
    # 13th minute boundary, resolved resolve_after_s = 30 min later
    assert parse_rfc3339_ms(resolved.emitted_at) == start + 43 * MINUTE_MS
    assert resolved.surge["ratio"] < 4.0

    # a surge that goes on for 90 minutes stays open while it lasts (the baseline learns a
    # lasting level as the new normal, but over its half-life, not within the hour)
    long = [clock_start(start - 12 * HOUR_MS), *burst(540, start, 90 * MINUTE_MS, "long")]
    _, events = run(long, until_ms=start + 90 * MINUTE_MS)
    assert len(of(events, "opened")) == 1
    assert of(events, "resolved") == []


def test_cooldown_holds_after_a_surge_resolves():
    start = T0_MS
    reports = [
        clock_start(start - HOUR_MS),
        *burst(60, start, 10 * MINUTE_MS, "a"),  # opens; resolves at +43 min
        *burst(60, start + 60 * MINUTE_MS, 10 * MINUTE_MS, "b"),  # inside the 1 h cooldown
        *burst(60, start + 120 * MINUTE_MS, 10 * MINUTE_MS, "c"),  # after it
    ]
    _, events = run(reports, until_ms=start + 4 * HOUR_MS)
    opened = of(events, "opened")
    assert len(opened) == 2
    first, second = opened
    assert first.incident_id != second.incident_id
    assert all(rid.startswith("a-") for rid in first.report_ids)
    assert all(rid.startswith("c-") for rid in second.report_ids)
    assert not any(rid.startswith("b-") for e in events for rid in e.report_ids)
    assert len(of(events, "resolved")) == 2


def test_report_ids_are_capped_at_200():
    reports = [clock_start(T0_MS - HOUR_MS), *burst(600, T0_MS, 10 * MINUTE_MS, "big")]
    _, events = run(reports)
    last = events[-1]
    assert last.report_count > 200
    assert len(last.report_ids) == 200 and last.report_ids_truncated
    assert last.to_dict()["report_ids_truncated"] is True


def test_state_stays_bounded_over_a_long_stream():
    rng = random.Random(3)
    detector = SurgeDetector()
    most_keys = most_reports = 0
    end = T0_MS + 48 * HOUR_MS
    for n, ts_ms in enumerate(range(T0_MS, end, 30_000)):  # two reports a minute, 48 h
        report = Report(
            id=f"r{n}",
            ts_ms=ts_ms,
            lat=rng.uniform(30.0, 50.0),
            lon=rng.uniform(-120.0, -80.0),  # thousands of districts: nearly every key is new
            reporter=f"u{n}",
            category=rng.choice(["pothole", "power_outage", "gas_leak"]),
            lang=rng.choice(["en", "es", None]),
        )
        assert detector.observe(report) == []
        most_keys = max(most_keys, detector.state_keys)
        most_reports = max(most_reports, detector.state_reports)
    assert n > 5_000
    assert most_keys < 1_000  # keys outlive their reports only while the baseline matters
    # short windows only: a key's expired reports go at its next report or the next sweep
    # and a quiet key's last few reports, for up to a short window plus a sweep
    assert most_reports <= 2 * (60 + 10 + 5 + 10) + 1
    assert detector.state_keys < 100
    detector.advance(end + 24 * HOUR_MS)
    assert detector.state_keys == 0 and detector.state_reports == 0
    assert len(detector.timers) == 0


def test_quiet_keys_let_go_of_their_reports_within_a_minute_of_the_short_window():
    # Thousands of districts at 12 reports a minute: nearly every key stays quiet and holds
    # its report. Once its reports have left the short window (5 minutes) a key lets go of
    # them at the next minute's sweep, so the holds stay near 6 minutes' worth (pruned every
    # 10 minutes they swung up to 15 minutes' worth).
    rng = random.Random(5)
    detector = SurgeDetector()
    tracker = detector.tracker
    window_min = SurgeParams().short_window_s / 60
    per_min = 12
    held = []
    for n, ts_ms in enumerate(range(T0_MS, T0_MS + HOUR_MS, MINUTE_MS // per_min)):
        report = Report(
            id=f"q{n}",
            ts_ms=ts_ms,
            lat=rng.uniform(30.0, 50.0),
            lon=rng.uniform(-120.0, -80.0),
            reporter=f"u{n}",
            category="pothole",
        )
        assert detector.observe(report) == []
        held.append(tracker.held_reports)
    assert not tracker.keys, "the stream must leave every key quiet"
    settled = held[20 * per_min :]
    assert max(settled) <= per_min * (window_min + 1) + 1
    assert min(settled) >= per_min * window_min - 1  # what the short window needs is held


def _mixed_stream() -> list[Report]:
    start = T0_MS
    return [
        clock_start(start - 2 * HOUR_MS),
        *background(0.3, start - 2 * HOUR_MS, start + 2 * HOUR_MS),
        *burst(90, start, 10 * MINUTE_MS, "en"),
        *burst(70, start + 3 * MINUTE_MS, 8 * MINUTE_MS, "es", lang="es"),
        *burst(40, start + 30 * MINUTE_MS, 5 * MINUTE_MS, "gas", category="gas_leak"),
    ]


def test_two_runs_are_byte_identical_whatever_the_advance_pattern():
    reports = sorted(_mixed_stream(), key=lambda r: (r.ts_ms, r.id))
    until = T0_MS + 3 * HOUR_MS

    def output(advance_every: int | None, seed: int = 0) -> list[bytes]:
        rng = random.Random(seed)
        detector = SurgeDetector()
        events = []
        for report in reports:
            if advance_every and rng.randrange(advance_every) == 0:
                previous = detector.clock_ms or report.ts_ms
                events.extend(detector.advance(rng.randint(previous, report.ts_ms)))
            events.extend(detector.observe(report))
        events.extend(detector.advance(until))
        events.extend(detector.flush())
        return [event.to_json() for event in events]

    plain = output(None)
    assert (
        len([line for line in plain if b'"opened"' in line]) == 2
    )  # English and Spanish together are one outbreak; then gas
    assert plain == output(None)
    assert plain == output(2, seed=1) == output(5, seed=2)


@pytest.mark.parametrize("fraction", [0.2, 0.45, 0.6, 0.8])
def test_a_snapshot_restored_and_rebuilt_continues_byte_identically(fraction):
    """The checkpoint holds baselines, open surges and timers; the windows come back from the
    input read again (the worker re-reads its rebuild range), with nothing counted twice."""
    reports = sorted(_mixed_stream(), key=lambda r: (r.ts_ms, r.id))
    cut = int(len(reports) * fraction)
    whole = SurgeDetector()
    expected = whole.observe_many(reports) + whole.advance(T0_MS + 3 * HOUR_MS)
    assert sum(1 for e in expected if e.event == "opened") == 2

    first = SurgeDetector()
    got = first.observe_many(reports[:cut])
    blob = pickle.dumps(first.snapshot(), protocol=5)
    second = SurgeDetector()
    second.restore(pickle.loads(blob))
    second.rebuild(reports[:cut])
    got += second.observe_many(reports[cut:]) + second.advance(T0_MS + 3 * HOUR_MS)
    assert [e.to_json() for e in got] == [e.to_json() for e in expected]


def test_a_snapshot_holds_no_window_so_it_stays_small():
    reports = sorted(_mixed_stream(), key=lambda r: (r.ts_ms, r.id))
    detector = SurgeDetector()
    detector.observe_many(reports[: len(reports) // 2])
    assert detector.state_reports > 50
    snapshot = detector.snapshot()
    assert "sparse" not in snapshot
    # per key: baseline, its minute, since, surge, cooldown, and (minute, count) pairs
    for saved in snapshot["keys"].values():
        assert len(saved) == 6 and all(len(pair) == 2 for pair in saved[5])
    restored = SurgeDetector()
    restored.restore(pickle.loads(pickle.dumps(snapshot)))
    assert restored.state_reports == 0 and restored.state_keys == detector.state_keys


def test_minute_counts_a_quiet_key_has_not_folded_survive_a_restart():
    # A key folds its minute counts into its baseline only when it is measured: at its own
    # reports, and at the sweep every 10 minutes. Here the district reports until 08:51 and
    # falls silent while another district moves the clock on; the 08:50 sweep folded up to
    # 08:44, and the checkpoint at 08:59 holds 08:45-08:50 unfolded, older than what a restart
    # reads again (the short window plus a minute). They must not be lost.
    start = clock_start(T0_MS - HOUR_MS)
    busy = burst(200, T0_MS - HOUR_MS, 51 * MINUTE_MS, "a")
    other = burst(40, T0_MS - 30 * MINUTE_MS, 29 * MINUTE_MS, "o", region=OTHER_REGION)
    later = burst(10, T0_MS + MINUTE_MS, 5 * MINUTE_MS, "b")
    before = sorted([start, *busy, *other], key=lambda r: (r.ts_ms, r.id))

    whole = SurgeDetector()
    whole.observe_many(before)
    whole.advance(T0_MS - MINUTE_MS)
    first = SurgeDetector()
    first.observe_many(before)
    first.advance(T0_MS - MINUTE_MS)
    region = int(REGION, 16)
    key = next(k for k in first._keys if k[0] == region and k[1] == CATEGORY)
    assert len(first._keys[key].pending) >= 5, "the scenario must leave minutes unfolded"
    snapshot = pickle.loads(pickle.dumps(first.snapshot()))
    restored = SurgeDetector()
    restored.restore(snapshot)
    restored.rebuild(before)
    for detector in (whole, restored):
        detector.observe_many(later)
        detector.advance(T0_MS + 10 * MINUTE_MS)
    assert restored.snapshot()["keys"][key] == whole.snapshot()["keys"][key]


def test_a_late_report_inside_the_window_counts_and_an_older_one_is_ignored():
    reports = [clock_start(T0_MS - HOUR_MS), *burst(30, T0_MS, 5 * MINUTE_MS, "s")]
    late, on_time = reports[1], [reports[0], *reports[2:]]
    detector = SurgeDetector()
    assert detector.observe_many(on_time) == []  # 29 in the window: one short of min_count
    too_old = Report(**{**_fields(late), "id": "old", "ts_ms": T0_MS - 6 * MINUTE_MS})
    assert detector.observe(too_old) == []
    (opened,) = detector.observe(late)  # behind the clock, inside the window: the 30th
    assert opened.event == "opened" and opened.report_count == 30
    assert opened.validated_at == opened.last_report_at  # judged at the clock, not its own time
    assert "old" not in opened.report_ids


def _fields(report: Report) -> dict:
    return {name: getattr(report, name) for name in FIELDS}


def test_nothing_is_judged_before_the_warm_up():
    # The very first reports the detector sees are a burst: no history, so no verdict.
    _, events = run(burst(60, T0_MS, 10 * MINUTE_MS, "s"))
    assert events == []


def test_a_disabled_detector_emits_nothing():
    reports = [clock_start(T0_MS - HOUR_MS), *burst(60, T0_MS, 10 * MINUTE_MS, "s")]
    detector, events = run(reports, SurgeParams(enabled=False), until_ms=T0_MS + HOUR_MS)
    assert events == [] and detector.state_keys == 0


def test_language_tags_reduce_to_their_primary_subtag():
    assert language_of("en-US") == language_of("EN") == language_of("en_GB") == "en"
    assert language_of(None) == language_of("") == language_of("??") == "und"


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_ratio", 0.5), ("short_window_s", 0), ("baseline_floor_per_min", 0), ("min_count", 0)],
)
def test_bad_params_fail_naming_the_key(field, value):
    with pytest.raises(ValueError, match=f"surge.{field}"):
        SurgeParams(**{field: value})


def test_min_count_must_keep_untracked_quiet_districts_below_the_ratio():
    # Districts under 3 reports per short window are not tracked; that is only safe while
    # min_count >= 3 x min_ratio (then such a district could never reach the ratio).
    SurgeParams(min_count=24, min_ratio=8)
    with pytest.raises(ValueError, match="surge.min_count must be at least 3 x surge.min_ratio"):
        SurgeParams(min_count=20, min_ratio=8)


@pytest.mark.parametrize("counted_before", [False, True])
def test_reports_too_old_when_they_came_are_not_taken_back_by_a_rebuild(counted_before):
    """Reports of a quiet key that came once the clock had passed them by more than the short
    window are ignored; read again after a restart (the rebuild range reaches a minute further
    back) they must be ignored too. They promoted the key there (and, with no report counted
    before, stopped the restart on an assertion)."""
    window_ms = SurgeParams().window_ms
    now = T0_MS + 2 * HOUR_MS
    early = [clock_start(now - 5 * MINUTE_MS)] if counted_before else []
    late = burst(4, now - window_ms - 40 * MINUTE_MS // 60, 20_000, "late")  # 40 s too old
    whole = SurgeDetector()
    whole.observe_many(early)
    whole.advance(now)
    held = whole.state_reports
    assert whole.observe_many(late) == [] and whole.state_reports == held  # ignored
    restored = SurgeDetector()
    restored.restore(pickle.loads(pickle.dumps(whole.snapshot())))
    restored.rebuild(sorted([*early, *late], key=lambda r: (r.ts_ms, r.id)))
    assert restored.state_keys == whole.state_keys
    assert restored.state_reports == whole.state_reports
