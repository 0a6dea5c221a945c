"""The compiled core (setup.py, geoincident/compiled.py) is really compiled here, and decides
exactly as the Python sources do: the same incident events, DLQ records, outcomes, bursts and
checkpoints, byte for byte.

The comparison runs the core in this process (compiled) and in a child process started with
GEOINCIDENT_PURE_PYTHON=1 (tests/differential.py), on random streams: incidents near each
other (merges), reporters sharing devices, staff and web sources, late, too late and duplicate
reports, junk, new-reporter crowds and district outbreaks, dispatcher actions, restarts from a
checkpoint, and any batch cuts. When the whole suite runs with GEOINCIDENT_PURE_PYTHON=1 there
is nothing compiled to compare: these tests are skipped.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import h3
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from geoincident import compiled
from geoincident.detectors.actions import ACTIONS
from geoincident.geo import destination
from tests import differential
from tests.builders import SPOT, line, report

ROOT = Path(__file__).resolve().parent.parent
PURE = compiled.pure_requested()

pytestmark = pytest.mark.skipif(
    PURE, reason=f"{compiled.PURE_ENV} is set: the whole run is pure Python, nothing to compare"
)


def test_the_core_is_compiled():
    """A build that silently fell back to pure Python (no compiler, a mypyc error: `pip
    install -e . -v` says which) fails here rather than passing slowly."""
    assert compiled.COMPILED, f"the detector core runs as pure Python: {compiled.REASON}"
    assert {"geoincident.detectors.engine", "geoincident.geo.grid"} <= set(compiled.MODULES)
    for name in compiled.MODULES:
        module = importlib.import_module(name)
        assert module.__file__ is not None and module.__file__.endswith(
            tuple(EXTENSION_SUFFIXES)
        ), f"{name} was imported from {module.__file__}, not its extension"


def test_a_source_changed_since_the_build_runs_the_core_from_its_sources():
    """An edit after an editable install: the digests the build recorded no longer match,
    so geoincident/compiled.py runs every module from its source (with a warning)."""
    from geoincident import _compiled  # type: ignore[attr-defined]

    sources = dict(_compiled.SOURCES)
    assert compiled._changed(sources) == []
    name = "geoincident/detectors/engine.py"
    assert compiled._changed({**sources, name: "0" * 32}) == [name]


@pytest.fixture(scope="module")
def pure_python() -> Iterator[Any]:
    """tests/differential.py in a child process that runs the Python sources."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.differential"],
        cwd=ROOT,
        env={**os.environ, compiled.PURE_ENV: "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def ask(request: object) -> Any:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(request) + "\n")
        child.stdin.flush()
        answer = child.stdout.readline()
        assert answer, f"the pure-Python child exited ({child.poll()}): see its stderr above"
        return json.loads(answer)

    try:
        yield ask
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=60)


def test_the_child_runs_the_python_sources(pure_python):
    answer = pure_python("mode")
    assert answer["compiled"] is False and answer["engine"].endswith(".py")
    assert differential.mode()["compiled"] is True


# ------------------------------------------------------------------------------ the streams

GRID_MS = 15_000  # event times on a 15 s grid: equal times and exact bounds happen often
CATEGORIES = ["streetlight_out", "pothole"]
# Places: SPOT, spots one radius or so away (incidents there can meet and merge), and spots
# kilometres away (independent ones).
PLACES = [SPOT] + [destination(*SPOT, b, d) for b, d in ((0, 180), (90, 260), (200, 420))]
PLACES += [destination(*SPOT, b, 3000.0) for b in (45, 160, 290)]
# the centre of SPOT's surge region (H3 resolution 6)
DISTRICT = h3.cell_to_latlng(h3.latlng_to_cell(*SPOT, 6))
ACCURACIES = [None, 4.0, 12.0, 60.0]
SOURCES = [None, "app", "web", "staff"]
LANGS = [None, "en", "es"]


def _late(quarters: int) -> int:
    return quarters * GRID_MS


@st.composite
def _group(draw, number: int) -> list:
    """Reports around one place within minutes: an incident, or not quite one."""
    lat, lon = draw(st.sampled_from(PLACES))
    category = draw(st.sampled_from(CATEGORIES))
    start = draw(st.integers(0, 240))  # quarter minutes
    reports = []
    for n in range(draw(st.integers(2, 8))):
        bearing = draw(st.integers(0, 359))
        distance = draw(st.sampled_from([0.0, 10.0, 40.0, 120.0, 240.0]))
        start += draw(st.sampled_from([0, 0, 1, 2, 4]))
        reporter = draw(st.one_of(st.just(f"g{number}-{n}"), st.sampled_from(["u1", "u2", "u3"])))
        reports.append(
            report(
                f"g{number}-{n}",
                start / 4,
                *destination(lat, lon, bearing, distance),
                reporter=reporter,
                category=category,
                device=draw(st.sampled_from([None, None, "d1", "d2", f"dev-{number}-{n}"])),
                source=draw(st.sampled_from(SOURCES)),
                accuracy_m=draw(st.sampled_from(ACCURACIES)),
                lang=draw(st.sampled_from(LANGS)),
            )
        )
    return reports


@st.composite
def _crowd(draw) -> list:
    """Many first-time reporters on their own devices at one spot within a minute."""
    lat, lon = draw(st.sampled_from(PLACES))
    start = draw(st.integers(0, 240))
    return [
        report(
            f"crowd-{n}",
            (start + n % 4) / 4,
            *destination(lat, lon, 37.0 * n, 15.0 * (n % 5)),
            reporter=f"new-{n}",
            device=f"phone-{n}",
        )
        for n in range(draw(st.integers(6, 14)))
    ]


@st.composite
def _outbreak(draw) -> list:
    """A district reporting one failure far above its rate: a surge (after the warm-up)."""
    start = draw(st.integers(80, 280))  # after the surge detector's warm-up
    category = draw(st.sampled_from(CATEGORIES))
    lang = draw(st.sampled_from(LANGS))
    return [
        report(
            f"ob-{n}",
            (start + n % 12) / 4,
            *destination(*DISTRICT, (n * 47) % 360, 100.0 + (n * 173) % 900),
            reporter=f"ob-user-{n}",
            category=category,
            lang=lang,
        )
        for n in range(draw(st.integers(26, 44)))
    ]


JUNK = [
    b"{bad",
    b"",
    b"\xff\xfe not utf-8",
    b"[1, 2]",
    b'{"id": "x"}',
    line(report("nowhere", 0, lat=0.0, lon=0.0)),
    line(report("no-such-kind", 0, category="zzz_unknown")),
]


@st.composite
def scenarios(draw) -> dict:
    reports = []
    for number in range(draw(st.integers(1, 5))):
        reports += draw(_group(number))
    for n in range(draw(st.integers(0, 30))):  # background over the city
        bearing, distance = draw(st.integers(0, 359)), draw(st.integers(500, 6000))
        quarter = draw(st.integers(0, 360))
        reports.append(
            report(
                f"bg{n}",
                quarter / 4,
                *destination(*SPOT, bearing, distance),
                category=draw(st.sampled_from(CATEGORIES)),
            )
        )
    if draw(st.booleans()):
        reports += draw(_crowd())
    if draw(st.integers(0, 3)) == 0:
        reports += draw(_outbreak())
    # arrival: event time plus a delay; most on time, some late (past the lateness bound),
    # a few too late (past the window); then duplicates and junk anywhere
    delays = st.sampled_from([0, 0, 0, 1, 2, 4, 8, 12, 40, 80])
    arrivals = [(r.ts_ms + _late(draw(delays)), n, line(r)) for n, r in enumerate(reports)]
    arrivals.sort()
    lines = [raw for _, _, raw in arrivals]
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(lines + JUNK)) if lines else JUNK[0])
    # actions and restarts between lines, then batches of any size
    markers: list[tuple[int, list]] = []
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(lines)))
        spec = {
            "action": draw(st.sampled_from([*ACTIONS, "ack", "flag_report", "dance"])),
            "incident": draw(st.integers(0, 9)),
            "member": draw(st.integers(0, 9)),
            "reporter": draw(st.sampled_from(["u1", "u2", "g0-1", "ob-user-3"])),
            "at": draw(st.sampled_from([None, None, "2026-11-24T10:00:00Z", "0001-01-01T00:00Z"])),
        }
        markers.append((at, ["action", spec]))
    for _ in range(draw(st.integers(0, 2))):
        markers.append((draw(st.integers(0, len(lines))), ["restart"]))
    markers.sort(key=lambda marker: marker[0])
    steps: list[list] = []
    position = 0
    for at, marker in [*markers, (len(lines), None)]:
        while position < at:
            size = draw(st.integers(1, 64))
            batch = lines[position : min(at, position + size)]
            steps.append(["reports", [raw.decode("latin-1") for raw in batch]])
            position += len(batch)
        if marker is not None:
            steps.append(marker)
    return {"profile": draw(st.sampled_from(["default", "eager"])), "steps": steps}


@settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(scenario=scenarios())
def test_compiled_and_pure_python_give_the_same_bytes(pure_python, scenario):
    assert compiled.COMPILED, f"nothing to compare: {compiled.REASON}"
    mine = differential.run(scenario)
    theirs = pure_python(scenario)
    mine = json.loads(json.dumps(mine))  # as the child's came: through JSON
    for key in ("events", "dlq", "action_dlq", "outcomes", "bursts", "checkpoints", "totals"):
        assert theirs.get(key) == mine.get(key), key
    assert theirs.get("error") == mine.get("error")


@pytest.mark.slow
def test_a_simulated_city_replays_to_the_same_bytes(tmp_path):
    """`geoincident replay`, compiled and pure, on a busy simulated city with hot spots and
    an outbreak: the same incidents file, byte for byte."""
    geoincident = Path(sys.executable).parent / "geoincident"
    stream = tmp_path / "city.jsonl"
    subprocess.run(
        [
            str(geoincident),
            "simulate",
            "--seed",
            "5",
            "--hours",
            "1.5",
            "--background-per-min",
            "200",
            "--hotspots",
            "downtown,nightlife",
            "--outbreak",
            "power_outage:1500:10",
            "-o",
            str(stream),
        ],
        check=True,
        capture_output=True,
    )
    outputs = {}
    for mode, extra in (("compiled", {}), ("pure", {compiled.PURE_ENV: "1"})):
        out = tmp_path / f"{mode}.jsonl"
        done = subprocess.run(
            [str(geoincident), "replay", str(stream), "-o", str(out)],
            env={**os.environ, **extra},
            check=True,
            capture_output=True,
            text=True,
        )
        expected = "core: compiled" if mode == "compiled" else "core: pure Python"
        assert expected in done.stderr
        outputs[mode] = (out.read_bytes(), Path(f"{out}.dlq.jsonl").read_bytes())
    assert outputs["compiled"][0].count(b'"event":"opened"') > 10
    assert outputs["compiled"] == outputs["pure"]


# ------------------------------------------------------------------------------ routing

# Region corners around SPOT (H3 resolution 7): where three regions meet, every nearby point
# is in the halo of the two it is not in.
CORNERS = [tuple(v) for v in h3.cell_to_boundary(h3.latlng_to_cell(*SPOT, 7))]


@st.composite
def routings(draw) -> dict:
    """Points over a city and right at region corners, routed over regions of resolution 7
    (surge cells of 9) with a halo of any width."""
    points = []
    for _ in range(draw(st.integers(1, 40))):
        if draw(st.booleans()):
            origin = draw(st.sampled_from(CORNERS))
            distance = draw(st.sampled_from([0.0, 0.5, 20.0, 140.0, 400.0, 900.0]))
        else:
            origin = SPOT
            distance = float(draw(st.integers(0, 8000)))
        points.append(list(destination(*origin, draw(st.integers(0, 359)), distance)))
    halo_m = draw(st.sampled_from([0.0, 150.0, 500.0, 1200.0]))
    return {"regions": [7, 9, halo_m, draw(st.sampled_from([1, 4, 16]))], "points": points}


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=routings())
def test_compiled_and_pure_python_route_alike(pure_python, scenario):
    assert compiled.COMPILED, f"nothing to compare: {compiled.REASON}"
    mine = json.loads(json.dumps(differential.route(scenario)))
    assert pure_python(scenario) == mine


def test_the_routing_comparison_sees_halos(pure_python):
    """A point at a corner of three regions, with a halo: it is routed to the other two."""
    scenario = {"regions": [7, 9, 500.0, 16], "points": [list(CORNERS[0])]}
    mine = differential.route(scenario)
    ((_, halo, _, _),) = mine["routes"]
    assert len(halo) == 2
    assert pure_python(scenario) == json.loads(json.dumps(mine))
