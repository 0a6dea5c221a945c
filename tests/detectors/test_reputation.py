"""Reporter reputation (detectors/reputation.py): a weight multiplier in [floor, 1] learned from
corroborated, uncorroborated and flagged reports, decaying in event time."""

import math
import random
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoincident.detectors.reputation import (
    DAY_MS,
    FILE_PERIOD_MS,
    Reputation,
    ReputationParams,
    Standing,
)

T0_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
HALF_LIFE_MS = 30 * DAY_MS  # the default


def fresh(**params: Any) -> Reputation:
    return Reputation(ReputationParams(**params))


def encoded(snapshot: dict[str, Standing]) -> bytes:
    """A snapshot as msgpack, each Standing as its 4-tuple (as the checkpoint writes it)."""
    return msgspec.msgpack.encode({reporter: s.plain() for reporter, s in snapshot.items()})


def test_new_reporters_start_at_the_prior():
    rep = fresh()
    assert rep.multiplier("new", T0_MS) == 1.0
    assert rep.weight("new", 0.7, T0_MS) == 0.7
    wary = fresh(prior=0.6)
    assert wary.multiplier("new", T0_MS) == 0.6
    assert wary.weight("new", 2.0, T0_MS) == pytest.approx(1.2)
    # someone else's history does not touch a new reporter
    wary.uncorroborated("other", T0_MS)
    assert wary.multiplier("new", T0_MS + HOUR_MS) == 0.6
    assert wary.state_reporters == 1


def test_twenty_reports_never_corroborated_end_at_most_0_3():
    rep = fresh()
    previous = rep.multiplier("spammer", T0_MS)
    for i in range(20):
        ts = T0_MS + i * HOUR_MS
        rep.uncorroborated("spammer", ts)
        now = rep.multiplier("spammer", ts)
        assert now <= previous  # every free report costs (until the floor)
        previous = now
    assert rep.multiplier("spammer", T0_MS + 20 * HOUR_MS) <= 0.3
    assert rep.multiplier("spammer", T0_MS + 20 * HOUR_MS) == 0.2  # the floor, not below


def test_reports_that_all_corroborate_stay_at_exactly_one():
    rep = fresh()
    for i in range(200):
        ts = T0_MS + i * 7 * HOUR_MS
        rep.corroborated("witness", ts)
        assert rep.multiplier("witness", ts) == 1.0
        assert rep.multiplier("witness", ts + 90 * DAY_MS) == 1.0
        assert rep.weight("witness", 0.9, ts) == 0.9


def test_a_flag_costs_more_than_a_free_report():
    rep = fresh()
    rep.flagged("flagged", T0_MS)
    rep.uncorroborated("free_once", T0_MS)
    rep.uncorroborated("free_twice", T0_MS)
    rep.uncorroborated("free_twice", T0_MS)
    flagged = rep.multiplier("flagged", T0_MS)
    free_once = rep.multiplier("free_once", T0_MS)
    free_twice = rep.multiplier("free_twice", T0_MS)
    assert flagged < free_twice < free_once < 1.0
    # flag_cost is what a flag weighs in free reports
    cheap = fresh(flag_cost=1.0)
    cheap.flagged("flagged", T0_MS)
    assert cheap.multiplier("flagged", T0_MS) == free_once


def test_the_worked_example_of_the_docstring():
    rep = fresh()  # prior 1, n0 4, flag_cost 3, floor 0.2, half-life 30 days
    rep.uncorroborated("one_free", T0_MS)
    rep.flagged("one_flag", T0_MS)
    for _ in range(6):
        rep.corroborated("mixed", T0_MS)
    for _ in range(4):
        rep.uncorroborated("mixed", T0_MS)
    for _ in range(20):
        rep.uncorroborated("spammer", T0_MS)
    assert rep.multiplier("one_free", T0_MS) == pytest.approx(0.8)
    assert rep.multiplier("one_flag", T0_MS) == pytest.approx(4 / 7)
    assert rep.multiplier("mixed", T0_MS) == pytest.approx(10 / 14)
    assert rep.multiplier("spammer", T0_MS) == 0.2
    assert rep.multiplier("spammer", T0_MS + 60 * DAY_MS) == pytest.approx(4 / 9)
    assert rep.multiplier("spammer", T0_MS + 150 * DAY_MS) == pytest.approx(4 / 4.625)


def test_a_penalised_reporter_recovers_after_several_half_lives():
    rep = fresh()
    for i in range(20):
        rep.uncorroborated("reformed", T0_MS + i * HOUR_MS)
    rep.flagged("reformed", T0_MS + 20 * HOUR_MS)
    last_ms = T0_MS + 20 * HOUR_MS
    assert rep.multiplier("reformed", last_ms) == 0.2
    after = [rep.multiplier("reformed", last_ms + k * HALF_LIFE_MS) for k in range(11)]
    assert after == sorted(after)  # recovers steadily
    assert after[1] < 0.5  # one half-life is not enough
    assert after[10] >= 0.99  # ten bring it back close to the prior
    # the same with a shorter half-life: recovery follows the parameter
    quick = fresh(half_life_days=1.0)
    for _ in range(20):
        quick.uncorroborated("reformed", T0_MS)
    assert quick.multiplier("reformed", T0_MS + 10 * DAY_MS) >= 0.99


def test_weight_is_the_source_weight_times_the_multiplier():
    rep = fresh()
    rep.uncorroborated("r", T0_MS)
    rep.flagged("r", T0_MS)
    now = T0_MS + DAY_MS
    m = rep.multiplier("r", now)
    assert 0.2 < m < 1.0
    assert rep.weight("r", 2.5, now) == 2.5 * m
    assert rep.weight("r", 0.0, now) == 0.0  # a blocked source stays at nothing


def test_disabled_gives_the_source_weight_and_records_nothing():
    rep = fresh(enabled=False, prior=0.5)
    for i in range(50):
        rep.uncorroborated("r", T0_MS + i)
        rep.flagged("r", T0_MS + i)
    assert rep.state_reporters == 0
    assert rep.snapshot() == {}
    for sw in (0.0, 0.3, 1.0, 4.0):
        assert rep.weight("r", sw, T0_MS + 100) == sw
        assert rep.weight("never_seen", sw, T0_MS + 100) == sw
    assert rep.multiplier("r", T0_MS) == 1.0


_KINDS = ("corroborated", "uncorroborated", "flagged")


def _play(rep: Reputation, history: list[tuple[int, str, int]]) -> None:
    for kind, reporter, ts in history:
        getattr(rep, _KINDS[kind])(reporter, ts)


_histories = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(["a", "b", "c"]),
        st.integers(T0_MS - 5 * HOUR_MS, T0_MS + 200 * DAY_MS),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    history=_histories,
    source_weight=st.floats(0.0, 1e6, allow_nan=False),
    now_ms=st.integers(T0_MS - DAY_MS, T0_MS + 400 * DAY_MS),
    floor=st.floats(0.01, 1.0),
    prior_share=st.floats(0.0, 1.0),
    prior_reports=st.floats(0.01, 50.0),
    flag_cost=st.floats(1.0, 20.0),
    half_life_days=st.floats(0.01, 365.0),
)
def test_weight_stays_between_floor_and_source_weight(
    history, source_weight, now_ms, floor, prior_share, prior_reports, flag_cost, half_life_days
):
    low = max(floor, 0.2)
    prior = low + (1.0 - low) * prior_share  # prior in [max(floor, 0.2), 1]
    rep = fresh(
        floor=floor,
        prior=prior,
        prior_reports=prior_reports,
        flag_cost=flag_cost,
        half_life_days=half_life_days,
    )
    _play(rep, history)
    for reporter in ("a", "b", "c", "never_seen"):
        w = rep.weight(reporter, source_weight, now_ms)
        assert w <= source_weight
        assert w >= floor * source_weight
        assert floor <= rep.multiplier(reporter, now_ms) <= 1.0


def test_equal_or_older_timestamps_give_the_same_state_in_any_order():
    events = [
        (kind, "r", T0_MS + offset)
        for kind, offset in [(0, 0), (1, 5 * HOUR_MS), (2, 2 * HOUR_MS), (1, 0), (0, 9 * HOUR_MS)]
    ]
    events += [(1, "r", T0_MS + 9 * HOUR_MS)] * 3
    now = T0_MS + 3 * DAY_MS
    expected = None
    for seed in range(20):
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        rep = fresh(half_life_days=1.0)
        _play(rep, shuffled)
        m = rep.multiplier("r", now)
        if expected is None:
            expected = m
        assert m == pytest.approx(expected, rel=1e-12)
    # the same as the formula over each event's own age
    ages = [now - ts for _, _, ts in events]
    decay = [math.exp2(-age / DAY_MS) for age in ages]
    c = sum(d for (kind, _, _), d in zip(events, decay, strict=True) if kind == 0)
    u = sum(d for (kind, _, _), d in zip(events, decay, strict=True) if kind == 1)
    f = sum(d for (kind, _, _), d in zip(events, decay, strict=True) if kind == 2)
    assert expected == pytest.approx((4 + c) / (4 + c + u + 3 * f), rel=1e-12)


def test_reads_never_decay_backwards():
    rep = fresh()
    for _ in range(10):
        rep.uncorroborated("r", T0_MS + DAY_MS)
    at = rep.multiplier("r", T0_MS + DAY_MS)
    assert rep.multiplier("r", T0_MS) == at  # a read before the newest event: as of it
    assert rep.multiplier("r", T0_MS + 2 * DAY_MS) > at


def _busy(rep: Reputation) -> None:
    rng = random.Random(7)
    for i in range(400):
        reporter = f"r{rng.randrange(40)}"
        ts = T0_MS + i * 37 * 60_000 - rng.randrange(10 * 60_000)  # a little out of order
        getattr(rep, _KINDS[rng.choice([0, 0, 1, 1, 1, 2])])(reporter, ts)


def test_snapshot_restore_through_msgpack_gives_identical_multipliers():
    rep = fresh(half_life_days=3.0)
    _busy(rep)
    blob = encoded(rep.snapshot())  # plain data only, or this raises
    restored = fresh(half_life_days=3.0)
    restored.restore(msgspec.msgpack.decode(blob))
    assert restored.state_reporters == rep.state_reporters == 40
    reporters = [f"r{i}" for i in range(40)] + ["never_seen"]
    end = T0_MS + 400 * 37 * 60_000
    for now in (T0_MS, end, end + 5 * DAY_MS):
        for reporter in reporters:
            assert restored.multiplier(reporter, now) == rep.multiplier(reporter, now)
            assert restored.weight(reporter, 0.8, now) == rep.weight(reporter, 0.8, now)
    # and they go on alike
    for r in (rep, restored):
        r.flagged("r3", end + DAY_MS)
        r.corroborated("r4", end + DAY_MS)
    assert restored.snapshot() == rep.snapshot()
    assert encoded(restored.snapshot()) == encoded(rep.snapshot())


def test_restore_refuses_a_malformed_snapshot():
    with pytest.raises(ValueError, match="'r'"):
        fresh().restore({"r": [1.0, 2.0, T0_MS]})
    with pytest.raises(ValueError, match="bad counts"):
        fresh().restore({"r": [1.0, -2.0, 0.0, T0_MS]})


def test_forget_drops_faded_reporters_only():
    rep = fresh()
    rep.flagged("old_flag", T0_MS)
    for _ in range(20):
        rep.uncorroborated("spammer", T0_MS)
    for _ in range(2):
        rep.corroborated("good", T0_MS)
    rep.uncorroborated("recent", T0_MS + 190 * DAY_MS)
    # 6.2 half-lives fade one flag (3 reports' worth) below 1 % of n0; not 20 free reports
    now = T0_MS + 200 * DAY_MS
    assert rep.forget(now) == 2  # old_flag, good (3 and 2 reports' worth)
    snapshot = rep.snapshot()
    assert set(snapshot) == {"spammer", "recent"}
    assert rep.state_reporters == 2
    # dropping changed no multiplier by more than 0.01
    assert rep.multiplier("old_flag", now) == 1.0
    before = fresh()
    before.flagged("old_flag", T0_MS)
    assert before.multiplier("old_flag", now) == pytest.approx(1.0, abs=0.01)
    assert rep.forget(T0_MS + 300 * DAY_MS) == 1  # spammer, after 9 half-lives; not recent
    assert set(rep.snapshot()) == {"recent"}


def test_a_reporter_whose_reports_corroborate_is_kept_while_their_counts_matter():
    rep = fresh()
    for _ in range(30):
        rep.corroborated("good", T0_MS)
    assert rep.multiplier("good", T0_MS + 60 * DAY_MS) == 1.0  # at the prior...
    assert rep.forget(T0_MS + 60 * DAY_MS) == 0  # ...but still 7.5 reports' worth of history


def test_summary_reports_the_last_sweep():
    rep = fresh()
    assert rep.summary()["reporters"] == 0
    for _ in range(20):
        rep.uncorroborated("spammer", T0_MS)
    rep.uncorroborated("once", T0_MS)
    rep.corroborated("good", T0_MS)
    rep.forget(T0_MS)
    summary = rep.summary()
    assert summary["as_of_ms"] == T0_MS
    assert summary["reporters"] == 3
    assert summary["below_half"] == 1
    assert summary["at_floor"] == 1
    assert summary["mean_multiplier"] == pytest.approx((0.2 + 0.8 + 1.0) / 3)
    rep.uncorroborated("newcomer", T0_MS)
    assert rep.summary()["reporters"] == 4  # live count; the rest waits for the next sweep


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("floor", 0.0),
        ("floor", 1.5),
        ("floor", math.nan),
        ("prior", 0.1),
        ("prior", 1.01),
        ("prior_reports", 0.0),
        ("half_life_days", 0.0),
        ("half_life_days", -3.0),
        ("flag_cost", 0.5),
    ],
)
def test_bad_params_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^reputation\.{key} must be "):
        ReputationParams(**{key: value})


def test_a_prior_below_the_floor_is_refused():
    with pytest.raises(ValueError, match=r"^reputation\.prior must be at least reputation\.floor"):
        ReputationParams(prior=0.3, floor=0.5)
    assert ReputationParams(prior=0.5, floor=0.5).prior == 0.5


# ------------------------------------------------------------------ through the detector


def test_through_the_detector_lonely_reports_lower_a_reporter_and_corroborated_ones_do_not():
    import orjson

    from geoincident.geo import destination
    from tests.builders import MINUTE_MS, SPOT, T0_MS, Driven, report, ring

    driven = Driven()
    lonely = [
        report(f"lone{n}", 20 * n, *destination(*SPOT, 18.0 * n, 3000.0), reporter="lonely")
        for n in range(20)
    ]
    # five people agree at one spot, twice, an hour apart: each joins both incidents
    agree = ring(5, 20, prefix="a") + ring(5, 20, start_minute=200, prefix="b")
    agree = [
        report(r.id, (r.ts_ms - T0_MS) / MINUTE_MS, r.lat, r.lon, reporter=f"ok{n % 5}")
        for n, r in enumerate(agree)
    ]
    driven.feed(sorted(lonely + agree, key=lambda r: (r.ts_ms, r.id)))
    end_ms = T0_MS + 500 * MINUTE_MS
    driven.detector.advance(end_ms)
    reputation = driven.detector.reputation
    assert reputation.multiplier("lonely", end_ms) <= 0.3
    assert all(reputation.multiplier(f"ok{n}", end_ms) == 1.0 for n in range(5))
    # the weight a new report of theirs gets, never above its source's
    probe = report("probe", 501, reporter="lonely")
    assert driven.detector.dispatcher.weight(probe) <= 0.3  # source weight 1.0

    # a dispatcher flags one of ok0's reports: ok0 counts for less at once
    incident_id = next(iter(driven.detector.incidents))
    member = next(
        m for m in driven.detector.incidents[incident_id].members.values() if m.reporter == "ok0"
    )
    action = orjson.dumps(
        {
            "action_id": "f1",
            "incident_id": incident_id,
            "action": "flag_report",
            "report_id": member.report_id,
            "by": "dispatcher-1",
            "at": "2026-11-24T17:21:00.000Z",
        }
    )
    driven.core.on_action(action, 0, 0, end_ms)
    assert reputation.multiplier("ok0", end_ms + MINUTE_MS) < 1.0
    assert reputation.multiplier("ok1", end_ms + MINUTE_MS) == 1.0

    # it survives a restart
    restarted = driven.restart([])
    for who in ("lonely", "ok0", "ok1"):
        assert restarted.detector.reputation.multiplier(
            who, end_ms + MINUTE_MS
        ) == reputation.multiplier(who, end_ms + MINUTE_MS)


def test_through_the_detector_a_weight_never_exceeds_the_source_weight():
    from geoincident.detectors import DetectorParams
    from tests.builders import Driven, report

    driven = Driven(DetectorParams(source_weights={"staff": 5.0, "bot": 0.5}))
    dispatcher = driven.detector.dispatcher
    probe = report("x", 0, source="staff")
    for source, most in (("staff", 5.0), ("bot", 0.5), (None, 1.0)):
        assert dispatcher.weight(report("x", 0, source=source)) <= most
        driven.detector.reputation.uncorroborated("user-x", probe.ts_ms)
    assert 0.2 * 5.0 <= dispatcher.weight(probe) < 5.0


def _faded(rep: Reputation, entry: Standing, now_ms: int) -> bool:
    """The forgetting rule, applied to one reporter directly (a pass over all of them)."""
    c, u, f, at_ms = entry.plain()
    penalty = u + rep.params.flag_cost * f
    if now_ms > at_ms:
        d = math.exp2((at_ms - now_ms) * (1.0 / rep.params.half_life_ms))
        c, penalty = c * d, penalty * d
    m = min(1.0, max(rep.params.floor, _m(rep, c, penalty)))
    return c + penalty < 0.01 * rep.params.prior_reports and abs(m - rep.params.prior) <= 0.01


def _m(rep: Reputation, c: float, penalty: float) -> float:
    n0 = rep.params.prior_reports
    return (rep.params.prior * n0 + c) / (n0 + c + penalty)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 30),  # reporter
            st.sampled_from(["corroborated", "uncorroborated", "flagged"]),
            st.integers(0, 400 * DAY_MS),  # event time
        ),
        max_size=80,
    ),
    st.lists(st.integers(0, 800 * DAY_MS), min_size=1, max_size=12),
    st.booleans(),
)
def test_a_sweep_drops_exactly_the_reporters_a_pass_over_all_of_them_would(events, sweeps, saved):
    """Only the reporters filed as possibly faded are looked at: the same ones go as when
    every reporter is tested, sweep after sweep, also after a restore. Besides the drawn
    sweeps, one every day from 130 to 330 days, where reporters' histories fade."""
    rep = Reputation()
    events = sorted(events, key=lambda e: e[2])
    sweeps = sorted({*sweeps, *range(130 * DAY_MS, 330 * DAY_MS, DAY_MS)})
    for sweep in sweeps:
        for reporter, kind, ts in [e for e in events if e[2] <= sweep]:
            getattr(rep, kind)(f"u{reporter}", T0_MS + ts)
        events = [e for e in events if e[2] > sweep]
        if saved:  # from a checkpoint: everyone filed again
            again = Reputation()
            again.restore(rep.snapshot())
            rep = again
        before = rep.snapshot()
        expected = {r for r, e in before.items() if _faded(rep, e, T0_MS + sweep)}
        assert rep.forget(T0_MS + sweep) == len(expected)
        assert set(before) - set(rep.snapshot()) == expected


# -- the bound on reporters held (max_reporters) ------------------------------------------------


def test_max_reporters_bounds_the_reporters_held():
    rep = fresh(max_reporters=100)
    for n in range(1_000):
        rep.uncorroborated(f"r{n}", T0_MS + n * 1_000)
        assert rep.state_reporters <= 100
    assert rep.state_reporters == 100
    assert rep.evicted == 900
    assert rep.summary()["evicted"] == 900
    # one free report each: those whose history fades soonest are the oldest, to within the
    # filing period (10 minutes of event time): none kept is older than one forgotten by more
    kept = {int(r[1:]) * 1_000 for r in rep.snapshot()}
    forgotten = set(range(0, 1_000_000, 1_000)) - kept
    assert max(forgotten) - min(kept) < FILE_PERIOD_MS
    assert min(kept) > 0


def test_the_reporters_with_the_least_evidence_go_first():
    rep = fresh(max_reporters=3)
    for _ in range(20):
        rep.uncorroborated("spammer", T0_MS)  # the floor: kept longest
    rep.flagged("flagged", T0_MS)  # three reports' worth
    rep.uncorroborated("once", T0_MS)  # one report's worth: fades first
    rep.uncorroborated("newcomer", T0_MS + HOUR_MS)
    assert set(rep.snapshot()) == {"spammer", "flagged", "newcomer"}
    assert rep.multiplier("once", T0_MS + HOUR_MS) == 1.0  # back at the prior
    assert rep.multiplier("spammer", T0_MS + HOUR_MS) == 0.2


def test_a_reporter_filed_early_whose_later_events_make_them_fade_later_is_kept():
    rep = fresh(max_reporters=2)
    rep.uncorroborated("active", T0_MS)  # filed as one report at T0: fades first as filed
    rep.uncorroborated("quiet", T0_MS + HOUR_MS)
    for day in range(1, 11):  # ten more free reports: fades long after "quiet"
        rep.uncorroborated("active", T0_MS + day * DAY_MS)
    rep.uncorroborated("third", T0_MS + 20 * DAY_MS)
    assert set(rep.snapshot()) == {"active", "third"}
    assert rep.evicted == 1


def test_no_bound_with_zero_and_none_evicted_below_the_bound():
    unbounded = fresh(max_reporters=0)
    bounded_rep = fresh(max_reporters=1_000)
    for n in range(1_000):
        unbounded.uncorroborated(f"r{n}", T0_MS + n)
        bounded_rep.uncorroborated(f"r{n}", T0_MS + n)
    assert unbounded.state_reporters == bounded_rep.state_reporters == 1_000
    assert unbounded.evicted == bounded_rep.evicted == 0
    assert unbounded.snapshot() == bounded_rep.snapshot()


def test_a_restore_under_a_lower_bound_keeps_the_reporters_a_live_bound_would():
    saved = fresh(max_reporters=0)
    for n in range(50):
        for _ in range(n % 5 + 1):
            saved.uncorroborated(f"r{n}", T0_MS + n * HOUR_MS)
    restored = fresh(max_reporters=20)
    restored.restore(msgspec.msgpack.decode(encoded(saved.snapshot())))
    assert restored.state_reporters == 20
    assert restored.evicted == 30
    # those kept have the most evidence (4 or 5 free reports), never a lighter one over them
    kept = restored.snapshot()
    lightest_kept = min(s.u for s in kept.values())
    assert all(s.u <= lightest_kept + 1e-9 for r, s in saved.snapshot().items() if r not in kept)
    assert lightest_kept > 3.0


def test_max_reporters_is_a_config_key_refusing_a_negative_value():
    with pytest.raises(ValueError, match="max_reporters"):
        ReputationParams(max_reporters=-1)


def test_rows_are_the_snapshot_and_later_events_do_not_reach_them():
    rep = fresh()
    for n in range(10):
        rep.uncorroborated(f"r{n}", T0_MS + n)
    rows = rep.rows()
    snapshot = rep.snapshot()
    for n in range(5, 15):  # changes, and new reporters, after the rows were taken
        rep.flagged(f"r{n}", T0_MS + 100 + n)
    assert len(rows) == 10 and set(rows) == set(snapshot)
    assert dict(rows.items()) == snapshot
    assert dict(rows.items()) != rep.snapshot()
    again = fresh()
    again.restore(rows)
    assert again.snapshot() == snapshot
