"""Scale-out against a real broker: 1, 2 and 4 `geoincident worker` processes sharing a
4-partition reports topic find what `geoincident replay` finds on the same stream, incidents
planted exactly on region borders included; processes killed, joining and leaving change
nothing (stream/routing.py, stream/sharded.py)."""

from __future__ import annotations

import contextlib
import io
import math
import random
import signal
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from geoincident.geo import destination, haversine_m
from geoincident.stream.config import Settings, load_settings
from geoincident.stream.replay import replay_files
from geoincident.stream.routing import REPORT, open_routed
from tests.integration.workers import (
    Tail,
    WorkerProcess,
    consume_records,
    create_topics,
    produce_to_partitions,
    topic_names,
)

pytestmark = pytest.mark.slow

RESOLUTION = 5  # regions of ~250 km²: a 30 km city spans several
CENTRE = (47.60, -122.33)
CATEGORIES = ("pothole", "streetlight_out", "traffic_signal_out", "downed_tree", "water_main_break")
LATENESS_S = 5.0
PARTITIONS = 4


def scale_env(names: dict, routed: str) -> dict[str, str]:
    return {
        "GEOINCIDENT_SCALE__REGION_RESOLUTION": str(RESOLUTION),
        "GEOINCIDENT_TOPICS__ROUTED": routed,
        "GEOINCIDENT_DETECTION__ALLOWED_LATENESS_S": str(LATENESS_S),
        "GEOINCIDENT_WORKER__LOG_LEVEL": "info",
    }


def settings(scaled: bool):
    overrides = {"detection.allowed_lateness_s": LATENESS_S}
    if scaled:
        overrides["scale.region_resolution"] = RESOLUTION
        overrides["topics.partitions"] = PARTITIONS
    return load_settings(overrides=overrides)


def border_points(count: int, rng: random.Random) -> list[tuple[float, float]]:
    """Points on the border between two regions (to a metre), found by bisection between
    two points in different regions."""
    regions = settings(True).region_map()
    assert regions is not None
    found: list[tuple[float, float]] = []
    while len(found) < count:
        a = destination(*CENTRE, rng.uniform(0, 360), rng.uniform(0, 12_000))
        b = destination(*a, rng.uniform(0, 360), 6_000)
        ra, rb = regions.region_of(*a), regions.region_of(*b)
        if ra == rb:
            continue
        lo, hi = a, b
        while haversine_m(*lo, *hi) > 1.0:
            mid = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2)
            if regions.region_of(*mid) == ra:
                lo = mid
            else:
                hi = mid
        if all(haversine_m(*lo, *p) > 2_000 for p in found):
            found.append(lo)
    return found


def city_stream(seed: int, start_ms: int) -> tuple[list[bytes], list[tuple[str, float, float]]]:
    """Two hours of a city: 4,000 background reports (8 categories' worth of noise), and
    planted five-reporter clusters, half of them straddling a region border (their reports
    alternate between the two sides, 30 m from the border point)."""
    rng = random.Random(seed)
    reports: list[dict] = []
    for n in range(4_000):
        lat, lon = destination(*CENTRE, rng.uniform(0, 360), 15_000 * math.sqrt(rng.random()))
        reports.append(
            {
                "id": f"bg-{n}",
                "ts": start_ms + rng.randrange(7_200_000),
                "lat": lat,
                "lon": lon,
                "reporter": f"resident-{rng.randrange(3_000)}",
                "tags": [f"#{rng.choice(CATEGORIES)}"],
            }
        )
    planted: list[tuple[str, float, float]] = []
    places = [(p, True) for p in border_points(8, rng)]
    places += [
        (destination(*CENTRE, rng.uniform(0, 360), rng.uniform(0, 12_000)), False) for _ in range(6)
    ]
    for k, ((lat0, lon0), on_border) in enumerate(places):
        category = CATEGORIES[k % len(CATEGORIES)]
        t0 = start_ms + 600_000 + k * 420_000
        for n in range(5):
            bearing = rng.uniform(0, 360) if not on_border else 90.0 + 180.0 * (n % 2)
            lat, lon = destination(lat0, lon0, bearing, 30.0)
            reports.append(
                {
                    "id": f"plant-{k}-{n}",
                    "ts": t0 + n * 20_000,
                    "lat": lat,
                    "lon": lon,
                    "reporter": f"witness-{k}-{n}",
                    "device": f"phone-{k}-{n}",
                    "tags": [f"#{category}"],
                }
            )
        planted.append((category, lat0, lon0))
    reports.sort(key=lambda r: (r["ts"], r["id"]))
    return [orjson.dumps(r) for r in reports], planted


def replay_values(values: list[bytes], configured: Settings) -> tuple[list[dict], list[dict]]:
    """`geoincident replay` of the values with these settings ([scale] or not): (events,
    DLQ records)."""
    params = configured.detector_params()
    out, dlq = io.BytesIO(), io.BytesIO()
    replay_files(
        io.BytesIO(b"\n".join(values) + b"\n"),
        out,
        dlq,
        params,
        "reports",
        regions=configured.region_map(params),
    )
    return (
        [orjson.loads(line) for line in out.getvalue().splitlines()],
        [orjson.loads(line) for line in dlq.getvalue().splitlines()],
    )


def replay_opened(values: list[bytes], scaled: bool) -> list[dict]:
    events, _ = replay_values(values, settings(scaled))
    return [e for e in events if e["event"] == "opened"]


def signature(event: dict) -> tuple[str, str, str]:
    return (event["kind"], event["category"], event["validated_at"])


def same_incidents(found: list[dict], expected: list[dict]) -> list[str]:
    """Problems matching two sets of `opened` events by (kind, category, validated_at) and
    location within 50 m: each expected incident once, nothing else."""
    problems = []
    left = list(found)
    for want in expected:
        match = next(
            (
                e
                for e in left
                if signature(e) == signature(want)
                and haversine_m(e["lat"], e["lon"], want["lat"], want["lon"]) <= 50.0
            ),
            None,
        )
        if match is None:
            problems.append(f"missing {signature(want)} at {want['lat']},{want['lon']}")
        else:
            left.remove(match)
    problems.extend(f"extra {signature(e)} {e['incident_id']}" for e in left)
    return problems


def distinct_opened(tail: Tail) -> tuple[list[dict], list[str]]:
    """One `opened` event per incident id (an event produced again after a restart is the
    same event), and the ids whose copies differ."""
    by_id: dict[str, dict] = {}
    differing = []
    for event in tail.values:
        if event["event"] != "opened":
            continue
        body = {k: v for k, v in event.items() if k != "emitted_at"}
        seen = by_id.setdefault(event["incident_id"], body)
        if seen != body:
            differing.append(event["incident_id"])
    return list(by_id.values()), differing


class Cluster:
    """`n` worker processes of one group on fresh output topics over a reports topic."""

    def __init__(self, bootstrap: str, names: dict, topic_name: Callable[[str], str], tmp: Path):
        self.bootstrap = bootstrap
        self.names = {
            **names,
            "incidents": topic_name("incidents"),
            "reports_dlq": topic_name("dlq"),
            "actions_dlq": topic_name("actions-dlq"),
            "group": topic_name("group"),
        }
        self.routed = topic_name("routed")
        self.tmp = tmp
        self.workers: list[WorkerProcess] = []

    def add(self) -> WorkerProcess:
        workdir = self.tmp / f"w{len(self.workers)}"
        workdir.mkdir()
        worker = WorkerProcess(
            self.bootstrap, self.names, workdir, **scale_env(self.names, self.routed)
        )
        self.workers.append(worker.start())
        return worker

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process is not None and w.process.poll() is None]

    def all_alive(self) -> bool:
        dead = [w for w in self.workers if w not in self.alive()]
        assert not dead, f"a worker died:\n{self.logs()}"
        return True

    def accepted(self) -> int:
        total = 0
        for worker in self.alive():
            with contextlib.suppress(OSError, KeyError):
                total += worker.totals()["accepted"]
        return total

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def logs(self) -> str:
        return "\n---\n".join(w.tail(30) for w in self.workers)


def holds_partitions(worker: WorkerProcess) -> bool:
    try:
        status, stats = worker.get("/stats")
    except OSError:
        return False
    return status == 200 and bool(stats.get("routed_partitions"))


def wait(predicate: Callable[[], bool], timeout_s: float, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s: {describe()}")


@pytest.fixture
def city(bootstrap, topic_name):
    """The stream, on a 4-partition reports topic keyed by reporter (so a place's reports are
    spread over every partition), and what replay makes of it."""
    start_ms = (int(time.time()) - 3 * 3600) * 1000
    values, planted = city_stream(7, start_ms)
    names = topic_names(topic_name, partitions=PARTITIONS)
    create_topics(bootstrap, names)
    expected = replay_opened(values, scaled=True)
    return names, values, planted, expected


def by_reporter(values: list[bytes]) -> dict[int, list[bytes]]:
    """Values keyed by reporter over the partitions, in order: a place's reports are spread
    over all of them."""
    by_partition: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for value in values:
        reporter = orjson.loads(value)["reporter"].encode()
        by_partition[zlib.crc32(reporter) % PARTITIONS].append(value)
    return by_partition


def test_replay_scaled_out_finds_what_one_detector_finds_and_every_planted_incident(city):
    names, values, planted, expected = city
    unsharded = replay_opened(values, scaled=False)
    assert same_incidents(expected, unsharded) == []
    for category, lat, lon in planted:
        assert any(
            e["category"] == category and haversine_m(e["lat"], e["lon"], lat, lon) < 60
            for e in expected
        ), (category, lat, lon)
    # the border incidents are owned by one region each, and their ids say which
    assert all(e["incident_id"].count("-") == 2 for e in expected)


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_workers_find_the_replay_incidents(city, bootstrap, topic_name, tmp_path, processes):
    names, values, planted, expected = city
    produce_to_partitions(bootstrap, names["reports"], by_reporter(values))
    cluster = Cluster(bootstrap, names, topic_name, tmp_path)
    want = len(values)
    try:
        with Tail(bootstrap, cluster.names["incidents"]) as tail:
            for _ in range(processes):
                cluster.add()
            wait(
                lambda: (
                    cluster.all_alive()
                    and cluster.accepted() >= want
                    and len(distinct_opened(tail)[0]) >= len(expected)
                ),
                240,
                lambda: (
                    f"accepted {cluster.accepted()} of {want}; "
                    f"{len(distinct_opened(tail)[0])} of {len(expected)} opened\n{cluster.logs()}"
                ),
            )
            time.sleep(3)  # anything opened twice would have arrived by now
            found, differing = distinct_opened(tail)
        assert differing == []
        assert same_incidents(found, expected) == [], cluster.logs()
        assert cluster.accepted() == want
        assert len(cluster.alive()) == processes
        if processes == 1:
            # every routed copy (sent in record batches) is its source record: the same bytes
            # and the same timestamp, to the millisecond (read once the worker stopped: it
            # sends marks every second)
            cluster.stop()
            reports = consume_records(bootstrap, names["reports"])
            source = {(r.partition, r.offset): r for r in reports}
            copies = 0
            for routed in consume_records(bootstrap, cluster.routed):
                kind, _, channel, _, origin, payload = open_routed(routed.value)
                if kind == REPORT:
                    original = source[(channel, origin)]
                    assert (payload, routed.timestamp) == (original.value, original.timestamp)
                    copies += 1
            assert copies >= want
    finally:
        cluster.stop()


def test_killed_joining_and_leaving_workers_change_nothing(city, bootstrap, topic_name, tmp_path):
    """The stream arrives over about a minute while one of two workers is killed (SIGKILL) and
    restarted five times, then a third joins and the first leaves: the same incidents as the
    replay, none opened twice with different content, every report accepted once."""
    names, values, planted, expected = city
    cluster = Cluster(bootstrap, names, topic_name, tmp_path)
    want = len(values)
    slices = 120
    parts = by_reporter(values)

    def feed() -> None:
        for k in range(slices):
            produce_to_partitions(
                bootstrap,
                names["reports"],
                {p: v[k * len(v) // slices : (k + 1) * len(v) // slices] for p, v in parts.items()},
            )
            time.sleep(1.0)

    feeder = threading.Thread(target=feed, daemon=True)
    killed_holding: list[int] = []
    try:
        with Tail(bootstrap, cluster.names["incidents"]) as tail:
            first, second = cluster.add(), cluster.add()
            feeder.start()
            for cycle in range(5):
                # killed while it holds routed partitions and is detecting on them
                wait(
                    lambda: holds_partitions(second),
                    120,
                    lambda: f"the second worker never got partitions\n{second.tail()}",
                )
                time.sleep(1.0 + cycle * 0.5)
                killed_holding.append(len(second.get("/stats")[1]["routed_partitions"]))
                second.kill(signal.SIGKILL)
                time.sleep(1)
                second.start()
            feeder_done_after_kills = [feeder.is_alive()]
            third = cluster.add()
            time.sleep(10)
            first.stop()
            feeder.join(120)
            wait(
                lambda: (
                    cluster.accepted() >= want and len(distinct_opened(tail)[0]) >= len(expected)
                ),
                300,
                lambda: (
                    f"accepted {cluster.accepted()} of {want}; "
                    f"{len(distinct_opened(tail)[0])} of {len(expected)} opened\n{cluster.logs()}"
                ),
            )
            time.sleep(3)
            found, differing = distinct_opened(tail)
            assert third.process is not None and third.process.poll() is None
        assert differing == []
        assert same_incidents(found, expected) == [], cluster.logs()
        assert cluster.accepted() == want  # each report accepted once, by its owner
        assert second.starts == 6
        assert len(killed_holding) == 5 and min(killed_holding) >= 1, killed_holding
        # the stream was still arriving at the last kill
        assert feeder_done_after_kills[0], "the stream had ended before the kills"
    finally:
        cluster.stop()
