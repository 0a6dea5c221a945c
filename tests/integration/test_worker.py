"""`geoincident worker` against a real Kafka-protocol broker (Tansu)."""

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import orjson
import pytest

from tests.integration.workers import (
    WorkerProcess,
    committed,
    consume,
    create_topics,
    events,
    produce,
    topic_names,
    without_emitted_at,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """A simulated city stream and what `geoincident replay` makes of it."""
    work = tmp_path_factory.mktemp("city")
    reports = work / "reports.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "geoincident.stream.cli",
            "simulate",
            "--seed",
            "5",
            "--hours",
            "3",
            "-o",
            str(reports),
        ],
        check=True,
        capture_output=True,
    )
    out = work / "replay.jsonl"
    subprocess.run(
        [sys.executable, "-m", "geoincident.stream.cli", "replay", str(reports), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    replayed = events(out.read_bytes().splitlines())
    lines = reports.read_bytes().splitlines()
    assert sum(e["event"] == "opened" for e in replayed) >= 5
    return lines, replayed


@pytest.fixture
def worker_factory(bootstrap, topic_name, tmp_path):
    started = []

    def make(partitions=1, **env):
        names = topic_names(topic_name, partitions)
        create_topics(bootstrap, names)
        worker = WorkerProcess(bootstrap, names, tmp_path, **env)
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


def opened_of(values):
    return [e for e in events(values) if e["event"] == "opened"]


def test_worker_opens_the_same_incidents_as_replay(bootstrap, city, worker_factory):
    lines, replayed = city
    worker = worker_factory()
    produce(bootstrap, worker.names["reports"], lines)
    worker.start()
    expected = [without_emitted_at(e) for e in replayed if e["event"] == "opened"]
    values = consume(
        bootstrap,
        worker.names["incidents"],
        until=lambda vs: len(opened_of(vs)) >= len(expected),
        timeout_s=120,
    )
    got = [without_emitted_at(e) for e in opened_of(values)]
    assert sorted(got, key=lambda e: e["incident_id"]) == sorted(
        expected, key=lambda e: e["incident_id"]
    )
    worker.wait_until(lambda: worker.processed() == len(lines))
    assert worker.get("/health")[0] == 200 and worker.get("/ready") == (200, {"ready": True})


def _now_rfc3339(offset_s: float = 0.0) -> str:
    moment = datetime.fromtimestamp(time.time() + offset_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


BAD = {
    "too_large": orjson.dumps({"id": "big", "text": "x" * 70_000}),
    "invalid_utf8": b'{"id": "\xff"}',
    "invalid_json": b'{"id": ',
    "not_an_object": b"[1, 2]",
    "missing_field": b'{"id": "m", "ts": 1795510800000, "lat": 47.6, "lon": -122.3}',
    "bad_type": b'{"id": 5, "ts": 1795510800000, "lat": 47.6, "lon": -122.3, "reporter": "a"}',
    "bad_coordinates": b'{"id": "c", "ts": 1795510800000, "lat": 95, "lon": 1, "reporter": "a"}',
    "bad_timestamp": b'{"id": "t", "ts": "yesterday", "lat": 47.6, "lon": -122.3, "reporter": "a"}',
}


def test_malformed_messages_go_to_the_dlq_and_good_incidents_still_open(
    bootstrap, city, worker_factory
):
    lines, replayed = city
    worker = worker_factory()
    future = orjson.dumps(
        {
            "id": "future",
            "ts": _now_rfc3339(3600),
            "lat": 47.6,
            "lon": -122.3,
            "reporter": "f",
            "tags": ["#pothole"],
        }
    )
    late = orjson.dumps(
        {
            "id": "ancient",
            "ts": "2000-01-01T00:00:00Z",
            "lat": 47.6,
            "lon": -122.3,
            "reporter": "o",
            "tags": ["#pothole"],
        }
    )
    mixed = []
    bad = list(BAD.values()) + [future]
    for n, line in enumerate(lines):
        mixed.append(line)
        if n % 25 == 0 and bad:
            mixed.append(bad.pop())
    mixed.append(late)  # after the stream, so the watermark is far past it
    produce(bootstrap, worker.names["reports"], mixed)
    worker.start()
    worker.wait_until(lambda: worker.processed() == len(mixed), timeout_s=120)
    dlq = events(
        consume(bootstrap, worker.names["reports_dlq"], until=lambda vs: len(vs) >= len(BAD) + 2)
    )
    reasons = sorted(d["reason"] for d in dlq)
    assert reasons == sorted([*BAD, "future_timestamp", "too_late"])
    for record in dlq:
        assert record["topic"] == worker.names["reports"] and record["offset"] is not None
        assert record["raw"] and record["detail"]
    values = consume(bootstrap, worker.names["incidents"])
    assert {e["incident_id"] for e in opened_of(values)} == {
        e["incident_id"] for e in replayed if e["event"] == "opened"
    }
    totals = worker.totals()
    assert totals["rejected"] == len(BAD) + 2
    assert worker.starts == 1 and worker.process.poll() is None
    assert worker.tail(10_000).count("event=fresh_start") == 1


def test_kill_9_mid_stream_loses_nothing_and_never_changes_an_opened_incident(
    bootstrap, city, worker_factory
):
    lines, replayed = city
    worker = worker_factory()
    chunks = [lines[n : n + 60] for n in range(0, len(lines), 60)]
    produce(bootstrap, worker.names["reports"], chunks[0])
    worker.start()
    sent = len(chunks[0])
    for chunk in chunks[1 : len(chunks) // 2]:
        worker.wait_until(lambda s=sent: worker.processed() >= s)
        time.sleep(0.7)  # checkpoints (1 s) and commits (1 s) fall between chunks
        produce(bootstrap, worker.names["reports"], chunk)
        sent += len(chunk)
    worker.kill(signal.SIGKILL)  # mid-stream: the last chunk may be half processed
    for chunk in chunks[len(chunks) // 2 :]:
        produce(bootstrap, worker.names["reports"], chunk)
    worker.start()
    worker.wait_until(lambda: worker.get("/ready")[0] == 200)
    worker.wait_until(lambda: worker.processed() >= len(lines), timeout_s=120)
    time.sleep(2)
    totals = worker.totals()
    assert sum(totals.values()) == len(lines), totals
    expected = {e["incident_id"]: without_emitted_at(e) for e in replayed if e["event"] == "opened"}
    got = opened_of(consume(bootstrap, worker.names["incidents"]))
    by_id: dict[str, list] = {}
    for event in got:
        by_id.setdefault(event["incident_id"], []).append(without_emitted_at(event))
    assert set(by_id) >= set(expected), "an incident was never opened"
    for incident_id, versions in by_id.items():
        assert all(v == versions[0] for v in versions), f"{incident_id} opened differently"
    assert "event=checkpoint_restored" in worker.tail(10_000)


def test_sigterm_stops_promptly_commits_and_a_restart_reprocesses_nothing(
    bootstrap, city, worker_factory
):
    lines, _ = city
    worker = worker_factory(GEOINCIDENT_WORKER__IDLE_ADVANCE="false")
    produce(bootstrap, worker.names["reports"], lines)
    worker.start()
    worker.wait_until(lambda: worker.processed() == len(lines), timeout_s=120)
    time.sleep(2.5)  # a commit interval
    before = consume(bootstrap, worker.names["incidents"])
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=10)  # the acceptance bound: stopped within 10 s
    assert worker.process.returncode == 0, worker.tail()
    assert committed(bootstrap, worker.names["group"], worker.names["reports"]) == {0: len(lines)}
    worker.start()
    worker.wait_until(lambda: worker.get("/ready")[0] == 200)
    time.sleep(3)
    after = consume(bootstrap, worker.names["incidents"])
    assert after == before, "the restart produced incident events again"
    assert worker.totals() == {**worker.totals(), "accepted": worker.totals()["accepted"]}
    assert sum(worker.totals().values()) == len(lines)
    assert "event=caught_up" not in worker.tail(10_000).split("checkpoint_restored")[-1]


def test_every_dispatcher_action_has_its_effect(bootstrap, city, worker_factory):
    lines, replayed = city
    worker = worker_factory(GEOINCIDENT_WORKER__IDLE_ADVANCE="false")
    produce(bootstrap, worker.names["reports"], lines)
    worker.start()
    opened = [e for e in replayed if e["event"] == "opened"]
    consume(
        bootstrap,
        worker.names["incidents"],
        until=lambda vs: len(opened_of(vs)) >= len(opened),
        settle_s=0.5,
    )
    resolved = {e["incident_id"] for e in replayed if e["event"] == "resolved"}
    still_open = [e for e in opened if e["incident_id"] not in resolved]
    first, second = still_open[0], still_open[1]
    at = "2026-11-25T10:00:00.000Z"
    actions = [
        {"incident_id": first["incident_id"], "action": "ack", "by": "d1", "at": at},
        {
            "incident_id": first["incident_id"],
            "action": "assign",
            "by": "d1",
            "to": "crew-7",
            "at": at,
        },
        {"incident_id": first["incident_id"], "action": "resolve", "by": "d1", "at": at},
        {"incident_id": first["incident_id"], "action": "reopen", "by": "d1", "at": at},
        {
            "incident_id": second["incident_id"],
            "action": "flag_report",
            "by": "d1",
            "report_id": second["report_ids"][0],
            "at": at,
        },
        {"action": "block", "by": "d1", "reporter": "someone", "at": at},
        {"incident_id": "inc-nope", "action": "ack", "by": "d1", "at": at},
    ]
    produce(bootstrap, worker.names["actions"], [orjson.dumps(a) for a in actions])
    dlq = events(consume(bootstrap, worker.names["actions_dlq"], until=lambda vs: len(vs) >= 1))
    assert [d["reason"] for d in dlq] == ["unknown_incident"]
    values = events(consume(bootstrap, worker.names["incidents"]))
    mine = [e for e in values if e["incident_id"] == first["incident_id"]]
    tail = mine[-4:]
    assert [e["event"] for e in tail] == ["updated", "updated", "resolved", "updated"]
    assert tail[0]["acknowledged_by"] == "d1" and tail[0]["status"] == "acknowledged"
    assert tail[1]["assigned_to"] == "crew-7"
    assert tail[2]["resolved_reason"] == "dispatcher"
    assert tail[3]["status"] != "resolved"
    assert [e["version"] for e in tail] == sorted(e["version"] for e in tail)
    flagged = [e for e in values if e["incident_id"] == second["incident_id"]][-1]
    assert second["report_ids"][0] not in flagged["report_ids"]
    assert (
        flagged["report_count"]
        == [e for e in values if e["incident_id"] == second["incident_id"]][-2]["report_count"] - 1
    )
    metrics = worker.text("/metrics")
    assert 'geoincident_actions_total{action="ack",outcome="applied"} 1.0' in metrics


def test_the_rocksdb_store_keeps_the_checkpoint_across_a_restart(bootstrap, city, worker_factory):
    lines, replayed = city
    worker = worker_factory(GEOINCIDENT_WORKER__STORE="rocksdb")
    produce(bootstrap, worker.names["reports"], lines[:200])
    worker.start()
    worker.wait_until(lambda: worker.processed() == 200)
    time.sleep(1.5)
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=10)
    produce(bootstrap, worker.names["reports"], lines[200:])
    worker.start()
    worker.wait_until(lambda: worker.processed() == len(lines), timeout_s=120)
    assert "event=checkpoint_restored" in worker.tail(10_000)
    got = {e["incident_id"] for e in opened_of(consume(bootstrap, worker.names["incidents"]))}
    assert got == {e["incident_id"] for e in replayed if e["event"] == "opened"}


def test_a_broker_outage_is_survived_and_sigterm_still_stops_the_worker(city, topic_name, tmp_path):
    from geoincident.stream.broker import EmbeddedBroker

    lines, _ = city
    with EmbeddedBroker(log_path=tmp_path / "own-broker.log") as own:
        names = topic_names(topic_name)
        create_topics(own.bootstrap, names)
        worker = WorkerProcess(own.bootstrap, names, tmp_path)
        produce(own.bootstrap, names["reports"], lines[:100])
        worker.start()
        try:
            worker.wait_until(lambda: worker.processed() == 100)
            own.stop()  # the broker goes away under the running worker
            time.sleep(8)
            assert worker.process.poll() is None, "the worker died with its broker"
            assert worker.get("/health")[0] == 200
            worker.process.send_signal(signal.SIGTERM)
            worker.process.wait(timeout=30)  # graceful, or the shutdown deadline (15 s)
        finally:
            worker.stop()
