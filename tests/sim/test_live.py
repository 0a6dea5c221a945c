"""``simulate --live``: pacing and time shift, and producing to a real Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import orjson
import pytest

from geoincident.sim.common import parse_ts_ms
from geoincident.sim.live import LiveOptions, Scheduled, live_shift_ms, pace, produce, schedule
from geoincident.sim.simulate import SimParams, simulate

NOW_MS = parse_ts_ms("2030-01-01T12:00:00Z")


@pytest.fixture(scope="module")
def small_sim():
    return simulate(SimParams(seed=6, hours=1, families={"true": 1}, background_per_hour=2.0))


def test_anchored_at_start_the_stream_begins_now(small_sim):
    shift_ms = live_shift_ms(small_sim, NOW_MS, speed=10)
    items = schedule(small_sim, shift_ms, speed=10)
    first_ts_ms = min(parse_ts_ms(orjson.loads(i.value)["ts"]) for i in items)
    assert NOW_MS <= first_ts_ms < NOW_MS + 30 * 60_000
    assert [i.wall_offset_s for i in items] == sorted(i.wall_offset_s for i in items)
    # Event time runs 10x faster: the hour plays in about six minutes of wall time.
    assert 300 < items[-1].wall_offset_s <= 372


def test_anchored_at_end_event_time_never_runs_ahead_of_the_wall_clock(small_sim):
    speed = 60.0
    items = schedule(small_sim, live_shift_ms(small_sim, NOW_MS, speed, "end"), speed)
    for item in items:
        ts_ms = parse_ts_ms(orjson.loads(item.value)["ts"])
        assert ts_ms <= NOW_MS + item.wall_offset_s * 1000


def test_schedule_keys_by_reporter_and_keeps_the_arrival_order(small_sim):
    items = schedule(small_sim, 0, speed=1)
    assert [orjson.loads(i.value)["id"] for i in items] == [r.id for r in small_sim.reports]
    assert items[0].key == small_sim.reports[0].reporter.encode()


async def test_pace_waits_for_each_offset_and_stops_when_asked():
    sent: list[tuple[float, bytes]] = []
    started = time.monotonic()

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append((time.monotonic() - started, value))

    items = [Scheduled(0.0, b"k", b"a"), Scheduled(0.2, b"k", b"b"), Scheduled(30.0, b"k", b"c")]
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.4, stop.set)
    count = await pace(items, "reports", send, stop)
    assert count == 2 and [v for _, v in sent] == [b"a", b"b"]
    assert sent[1][0] >= 0.19
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- real broker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from geoincident.stream.broker import EmbeddedBroker

    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as running:
        yield running.bootstrap


async def _consume_all(brokers: str, topic: str, expected: int) -> list[dict]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=brokers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    got: list[dict] = []
    try:
        deadline = time.monotonic() + 20
        while len(got) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                got.extend(orjson.loads(record.value) for record in records)
    finally:
        await consumer.stop()
    return got


@pytest.mark.integration
async def test_live_mode_produces_every_report_to_kafka_with_event_time_shifted_to_now(
    broker, small_sim
):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    await admin.create_topics([NewTopic("reports-live", 1, 1)])
    await admin.close()
    before_ms = round(time.time() * 1000)
    # One event-time hour in about a second of wall time.
    options = LiveOptions(brokers=broker, topic="reports-live", speed=3600.0)
    sent = await produce(small_sim, options)
    assert sent == len(small_sim.reports)
    got = await _consume_all(broker, "reports-live", sent)
    assert [r["id"] for r in got] == [r.id for r in small_sim.reports]
    first_ts_ms = min(parse_ts_ms(r["ts"]) for r in got)
    assert before_ms - 1000 <= first_ts_ms <= round(time.time() * 1000) + 30 * 60_000


@pytest.mark.integration
async def test_live_mode_stops_cleanly_when_asked(broker, small_sim):
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    # The hour would take ~2 s; stopped after 0.5 s, part of it is sent and flushed.
    options = LiveOptions(brokers=broker, topic="reports-stop", speed=1800.0)
    sent = await asyncio.wait_for(produce(small_sim, options, stop), timeout=15)
    assert 0 < sent < len(small_sim.reports)
    got = await _consume_all(broker, "reports-stop", sent)
    assert len(got) == sent


async def test_an_unreachable_broker_fails_after_the_configured_attempts(small_sim):
    from aiokafka.errors import KafkaConnectionError

    options = LiveOptions(brokers=f"127.0.0.1:{_free_port()}", connect_attempts=1)
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(produce(small_sim, options), timeout=15)


@pytest.mark.integration
def test_the_live_command_produces_the_stream_and_writes_a_shifted_truth(broker, tmp_path):
    import typer
    from typer.testing import CliRunner

    from geoincident.sim.cli import register

    app = typer.Typer()
    register(app)
    truth = tmp_path / "truth.json"
    args = [
        "simulate",
        "--live",
        "--brokers",
        broker,
        "--topic",
        "reports-cli",
        "--hours",
        "1",
        "--families",
        "none,true=1",
        "--speed",
        "3600",
        "--truth",
        str(truth),
    ]
    before_ms = round(time.time() * 1000)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = orjson.loads(truth.read_bytes())
    assert "sent " in result.stderr
    (item,) = doc["items"]
    assert item["start_ms"] >= before_ms - 1000
    got = asyncio.run(_consume_all(broker, "reports-cli", doc["report_count"]))
    assert len(got) == doc["report_count"]
