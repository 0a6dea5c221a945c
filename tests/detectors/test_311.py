"""A 311 operator's building-wide conditions, end to end with the operator's configuration.

Tenants of one building call about no heat or no hot water on different days; the city files
every later call about the same building and condition as a duplicate of the first one. With
deploy/examples/311.toml (two independent callers, within 40 m, over a week, kept open a week)
every duplicate must land in its original's incident, one incident per building episode and
condition, none for a single caller. The stream is the committed fixture
tests/fixtures/311_building_conditions.jsonl (written by tests/fixtures/make_311.py, whose
truth file names the originals and their duplicates), replayed through the real driver.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.params import DetectorParams
from geoincident.detectors.timefmt import parse_rfc3339_ms
from geoincident.geo import haversine_m
from geoincident.stream.config import load_settings
from geoincident.stream.replay import ReplaySummary, replay, replay_core

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "examples" / "311.toml"
FIXTURES = ROOT / "tests" / "fixtures"
GENERATOR = FIXTURES / "make_311.py"
STREAM = FIXTURES / "311_building_conditions.jsonl"
TRUTH = FIXTURES / "311_building_conditions.truth.json"
CONDITIONS = ("heat_complaint", "water_complaint")
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS


@dataclass
class Run:
    summary: ReplaySummary
    events: list[IncidentEvent]
    rejects: list[bytes]

    @property
    def last(self) -> dict[str, IncidentEvent]:
        """The last event of each incident id."""
        return {event.incident_id: event for event in self.events}

    def incidents_of(self, report_id: str) -> set[str]:
        """Incidents whose last event lists the report."""
        return {i for i, event in self.last.items() if report_id in event.report_ids}


def operator_params() -> DetectorParams:
    return load_settings(CONFIG).detector_params()


def default_rules_params() -> DetectorParams:
    """The same taxonomy (heat and water categories added), no category overrides: every
    category under the default [detection] rules."""
    return dataclasses.replace(operator_params(), categories={})


def run_replay(params: DetectorParams) -> Run:
    events: list[IncidentEvent] = []
    rejects: list[bytes] = []
    summary = replay(
        STREAM.read_bytes().splitlines(), replay_core(params, "311"), events.append, rejects.append
    )
    return Run(summary, events, rejects)


@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads(TRUTH.read_text())


@pytest.fixture(scope="module")
def call_ms() -> dict[str, int]:
    """Event time of every report in the fixture, by id (ts is epoch ms or RFC 3339)."""
    times = {}
    for line in STREAM.read_bytes().splitlines():
        report = json.loads(line)
        ts = report["ts"]
        times[report["id"]] = ts if isinstance(ts, int) else parse_rfc3339_ms(ts)
    return times


@pytest.fixture(scope="module")
def operator() -> Run:
    return run_replay(operator_params())


@pytest.fixture(scope="module")
def default_rules() -> Run:
    return run_replay(default_rules_params())


def validating(truth: dict) -> list[dict]:
    return [ep for ep in truth["episodes"] if ep["validates"]]


def landed(run: Run, truth: dict) -> int:
    """Known duplicates (of the episodes that must validate) listed in the one incident that
    lists their original."""
    count = 0
    for ep in validating(truth):
        homes = run.incidents_of(ep["original"])
        if len(homes) != 1:
            continue
        (home,) = homes
        count += sum(1 for dup in ep["duplicates"] if run.incidents_of(dup) == {home})
    return count


def ms(text: str) -> int:
    return parse_rfc3339_ms(text)


# ------------------------------------------------------------------ the fixture and the config


def test_the_generator_reproduces_the_committed_fixture(tmp_path):
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out-dir", str(tmp_path)], check=True, cwd=ROOT
    )
    assert (tmp_path / STREAM.name).read_bytes() == STREAM.read_bytes()
    assert (tmp_path / TRUTH.name).read_bytes() == TRUTH.read_bytes()


def test_the_fixture_holds_what_the_tests_rely_on(truth, call_ms):
    episodes = truth["episodes"]
    assert len(call_ms) == truth["reports"]
    assert any(ep["validates"] and ep["callers"] == 2 for ep in episodes)
    assert all(ep["callers"] >= 2 for ep in episodes if ep["validates"])
    assert all(ep["callers"] == 1 for ep in episodes if not ep["validates"])
    for ep in validating(truth):  # every later call within a week of the one before it
        ids = [ep["original"], *ep["duplicates"]]
        gaps = [call_ms[b] - call_ms[a] for a, b in zip(ids, ids[1:], strict=False)]
        assert all(0 < gap < WEEK_MS for gap in gaps), ep
    # the two episodes of one building: the second starts more than two weeks after the
    # first, and more than a week after the first's last call (its request has resolved)
    first, second = (ep for ep in episodes if ep["building"] == truth["two_episodes"])
    assert second["first_call_ms"] - first["first_call_ms"] > 2 * WEEK_MS
    assert second["first_call_ms"] - first["last_call_ms"] > WEEK_MS
    # the last report comes more than a week after every last call
    assert max(call_ms.values()) > max(ep["last_call_ms"] for ep in episodes) + WEEK_MS


def test_the_operator_config_sets_the_building_rules():
    params = operator_params()
    for category in CONDITIONS:
        rules = params.for_category(category)
        assert (rules.threshold, rules.window_s, rules.radius_m) == (2.0, 604_800.0, 40.0)
        assert params.resolve_after_ms_of(category) == WEEK_MS
        assert params.update_interval_ms_of(category) == 3_600_000
    # the default taxonomy is extended, not replaced, and its categories keep the defaults
    assert "pothole" in params.taxonomy.names
    assert params.for_category("pothole") == params.defaults
    assert params.defaults.threshold == 5.0


def test_every_report_is_accepted(operator, truth):
    summary = operator.summary.as_dict()
    assert operator.rejects == []
    assert summary["accepted"] == summary["read"] == truth["reports"]
    assert summary["duplicate"] == summary["unclassified"] == 0


# ------------------------------------------------------------------ the operator's config


def test_every_duplicate_lands_in_its_originals_incident(operator, truth):
    missing = []
    for ep in validating(truth):
        homes = operator.incidents_of(ep["original"])
        for dup in ep["duplicates"]:
            if len(homes) != 1 or operator.incidents_of(dup) != homes:
                missing.append((ep["building"], ep["category"], ep["callers"], dup))
    assert missing == []


def test_each_building_episode_opens_exactly_one_incident(operator, truth):
    opened = [e for e in operator.events if e.event == "opened"]
    assert len({e.incident_id for e in opened}) == len(opened)  # opened once each
    assert {e.category for e in opened} <= set(CONDITIONS)  # street reports open nothing
    assert all(e.kind == "local" for e in operator.events)
    assert len(opened) == len(validating(truth))
    for ep in validating(truth):
        ids = {ep["original"], *ep["duplicates"]}
        homes = set().union(*(operator.incidents_of(i) for i in ids))
        assert len(homes) == 1, ep
        (home,) = homes
        last = operator.last[home]
        assert last.category == ep["category"]
        assert set(last.report_ids) == ids  # nothing from another building or condition
        assert not last.report_ids_truncated


def test_an_episode_validates_when_its_second_caller_calls(operator, truth, call_ms):
    """Two independent callers is the rule: the incident is validated at the second distinct
    caller's call, not days later at a third."""
    late = []
    for ep in validating(truth):
        homes = operator.incidents_of(ep["original"])
        if len(homes) != 1:
            late.append((ep["building"], ep["category"], "never"))
            continue
        (home,) = homes
        opened = next(e for e in operator.events if e.incident_id == home)
        assert opened.event == "opened"
        if ms(opened.validated_at) != call_ms[ep["second_caller"]]:
            days = (ms(opened.validated_at) - call_ms[ep["second_caller"]]) / DAY_MS
            late.append((ep["building"], ep["category"], f"{days:.1f} days late"))
    assert late == []


def test_single_callers_open_no_incident(operator, truth):
    singles = [ep for ep in truth["episodes"] if not ep["validates"]]
    assert len(singles) >= 10
    for ep in singles:
        for report_id in (ep["original"], *ep["duplicates"]):
            assert operator.incidents_of(report_id) == set(), ep


def test_one_building_two_episodes_two_incidents(operator, truth):
    first, second = (ep for ep in truth["episodes"] if ep["building"] == truth["two_episodes"])
    homes = [operator.incidents_of(ep["original"]) for ep in (first, second)]
    assert all(len(h) == 1 for h in homes), homes
    (a,), (b,) = homes
    assert a != b
    # the first resolved as quiet before the second opened
    resolved = operator.last[a]
    opened = next(e for e in operator.events if e.incident_id == b)
    assert resolved.resolved_reason == "quiet"
    assert ms(resolved.emitted_at) < ms(opened.validated_at)


def test_neighbouring_buildings_stay_separate(operator, truth):
    one, other = (
        next(ep for ep in truth["episodes"] if ep["building"] == name)
        for name in truth["neighbours"]
    )
    homes = [operator.incidents_of(ep["original"]) for ep in (one, other)]
    assert all(len(h) == 1 for h in homes), homes
    (a,), (b,) = homes
    assert a != b
    first, second = operator.last[a], operator.last[b]
    assert haversine_m(first.lat, first.lon, second.lat, second.lon) > 100.0
    assert first.superseded_by is None and second.superseded_by is None
    assert {first.resolved_reason, second.resolved_reason} == {"quiet"}


def test_a_tenant_calling_twice_is_one_caller(operator, truth):
    (twice,) = (ep for ep in truth["episodes"] if ep["building"] == truth["repeat_caller"])
    assert (len(twice["duplicates"]) + 1, twice["callers"]) == (3, 2)
    homes = operator.incidents_of(twice["original"])
    assert len(homes) == 1, homes
    (home,) = homes
    last = operator.last[home]
    assert (last.report_count, last.independent_reporters, last.score) == (3, 2, 2.0)
    # a tenant calling twice alone never validates
    (alone,) = (ep for ep in truth["episodes"] if ep["building"] == truth["lone_repeat_caller"])
    assert (len(alone["duplicates"]) + 1, alone["callers"]) == (2, 1)
    assert operator.incidents_of(alone["original"]) == set()
    assert operator.incidents_of(alone["duplicates"][0]) == set()


def test_independent_reporters_count_distinct_callers(operator, truth):
    found, expected = [], []
    for ep in validating(truth):
        key = (ep["building"], ep["category"], ep["note"])
        expected.append((key, len(ep["duplicates"]) + 1, ep["callers"]))
        for home in operator.incidents_of(ep["original"]):
            last = operator.last[home]
            found.append((key, last.report_count, last.independent_reporters))
    assert found == expected


def test_a_straggler_joins_while_the_request_is_open(operator, truth, call_ms):
    """A call more than a week after the original, within a week of the previous call: the
    request is still open (kept a week after the last call), so it is a duplicate."""
    (ep,) = (ep for ep in truth["episodes"] if "straggler" in ep["note"])
    straggler = ep["duplicates"][-1]
    assert call_ms[straggler] - call_ms[ep["original"]] > WEEK_MS
    homes = operator.incidents_of(ep["original"])
    assert len(homes) == 1 and operator.incidents_of(straggler) == homes


def test_open_for_a_week_after_the_last_call_then_quiet(operator, truth):
    by_incident = defaultdict(list)
    for event in operator.events:
        by_incident[event.incident_id].append(event)
    assert by_incident
    last_call = {}
    for ep in validating(truth):
        for home in operator.incidents_of(ep["original"]):
            last_call[home] = ep["last_call_ms"]
    assert set(last_call) == set(by_incident)
    for incident_id, events in by_incident.items():
        *before, last = events
        assert [e.event for e in before].count("resolved") == 0
        assert last.event == "resolved" and last.resolved_reason == "quiet"
        assert ms(last.last_report_at) == last_call[incident_id]
        # resolved exactly a week after the last call, not sooner
        assert ms(last.emitted_at) == last_call[incident_id] + WEEK_MS
        # a few days after the last call it was still open
        three_days = last_call[incident_id] + 3 * DAY_MS
        seen = [e for e in events if ms(e.emitted_at) <= three_days]
        assert seen and seen[-1].status == "open"


# ------------------------------------------------------------------ the contrast


def test_the_configuration_is_what_files_duplicates_under_their_original(
    operator, default_rules, truth
):
    """Under the default rules (five callers within 250 m and 15 minutes, resolved after an
    hour) tenants calling days apart never make an incident; the operator's rules file every
    duplicate under its original."""
    total = sum(len(ep["duplicates"]) for ep in validating(truth))
    assert total >= 40
    with_config = landed(operator, truth)
    with_defaults = landed(default_rules, truth)
    assert with_defaults < with_config
    assert with_config == total
