"""The embedded broker and topic creation, against real Tansu processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from geoincident.stream.broker import BrokerStartError, EmbeddedBroker, ensure_topics

pytestmark = pytest.mark.integration

RECORDS = 900
PARTITIONS = 3


def _gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (absent, or a zombie waiting for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


async def test_records_on_three_partitions_are_consumed_once_and_committed(
    bootstrap: str, topic_name: Callable[[str], str], fast_group_options: dict[str, int]
) -> None:
    topic, group = topic_name("reports"), topic_name("group")
    assert await ensure_topics(bootstrap, {topic: PARTITIONS}) == {topic: PARTITIONS}

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(
                topic,
                key=f"reporter-{i % 97}".encode(),
                value=orjson.dumps({"id": f"r{i}", "seq": i}),
            )
            for i in range(RECORDS)
        ]
        written = await asyncio.gather(*sends)
    finally:
        await producer.stop()
    # Tansu's ListOffsets(latest) is not the true end, so the expected commit per partition
    # comes from the offsets the broker acknowledged to the producer.
    next_offset = {p: 0 for p in range(PARTITIONS)}
    for meta in written:
        next_offset[meta.partition] = max(next_offset[meta.partition], meta.offset + 1)
    assert all(next_offset.values()), f"keys did not spread over partitions: {next_offset}"

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **fast_group_options,
    )
    await consumer.start()
    seen: Counter[str] = Counter()
    per_partition: Counter[int] = Counter()
    try:
        deadline = time.monotonic() + 30
        while sum(seen.values()) < RECORDS and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                per_partition[tp.partition] += len(records)
                seen.update(orjson.loads(record.value)["id"] for record in records)
        await consumer.commit()
        committed = {
            p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)
        }
    finally:
        await consumer.stop()

    assert set(seen) == {f"r{i}" for i in range(RECORDS)}
    assert max(seen.values()) == 1, "a record was delivered twice"
    assert dict(per_partition) == next_offset  # offsets start at 0 and have no gaps here
    assert committed == next_offset

    # Read back through a fresh client: the commit lives on the broker, not in the consumer.
    # (aiokafka's admin list_consumer_group_offsets speaks an OffsetFetch Tansu 0.6 rejects.)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await reader.start()
    try:
        stored = {p: await reader.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        await reader.stop()
    assert stored == next_offset


async def test_ensure_topics_is_idempotent_and_keeps_existing_partitions(
    bootstrap: str, topic_name: Callable[[str], str]
) -> None:
    reports, incidents = topic_name("reports"), topic_name("incidents")
    wanted = {reports: 3, incidents: 1}
    assert await ensure_topics(bootstrap, wanted) == wanted
    assert await ensure_topics(bootstrap, wanted) == wanted
    # An existing topic is never re-partitioned behind the operator's back.
    assert await ensure_topics(bootstrap, {reports: 6}) == {reports: 3}


async def test_ensure_topics_rejects_nonsense_before_touching_the_broker() -> None:
    with pytest.raises(ValueError, match="partition"):
        await ensure_topics("127.0.0.1:1", {"reports": 0})


async def test_ensure_topics_gives_up_after_its_timeout_without_a_broker() -> None:
    from geoincident.stream.broker import free_tcp_port

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not ready"):
        await ensure_topics(f"127.0.0.1:{free_tcp_port()}", {"reports": 1}, timeout_s=1.0)
    assert time.monotonic() - started < 5


def test_broker_stops_cleanly_and_leaves_no_process(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    with broker:
        pid = broker.pid
        assert pid is not None and broker.running
        assert not _gone(pid)
    assert not broker.running and broker.pid is None
    assert _gone(pid)
    broker.stop()  # a second stop is harmless


async def test_sync_start_also_works_inside_a_running_event_loop(tmp_path: Path) -> None:
    # e.g. a synchronous fixture used by an async test: the readiness probe cannot nest
    # asyncio.run() in this thread, so the broker runs it on a helper thread.
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        assert broker.running
        pid = broker.pid
    assert pid is not None and _gone(pid)


def test_a_taken_port_fails_fast_with_the_brokers_own_words(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log", startup_timeout_s=20)
        started = time.monotonic()
        with pytest.raises(BrokerStartError, match="Address in use"):
            broker.start()
    assert time.monotonic() - started < 10
    assert not broker.running


async def test_async_context_manager_serves_kafka_and_stops(
    tmp_path: Path, topic_name: Callable[[str], str]
) -> None:
    async with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        pid = broker.pid
        topic = topic_name("t")
        assert await ensure_topics(broker.bootstrap, {topic: 2}) == {topic: 2}
    assert pid is not None and _gone(pid)


_OWNER_SCRIPT = """
import time
from geoincident.stream.broker import EmbeddedBroker
with EmbeddedBroker() as broker:
    print(broker.pid, flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_broker_dies_with_its_owner(signum: signal.Signals) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    broker_pid: int | None = None
    try:
        assert owner.stdout is not None
        broker_pid = int(owner.stdout.readline())
        assert not _gone(broker_pid)
        # A Ctrl-C reaches the whole foreground group; the broker has its own session, so
        # only the owner gets it and stops the broker on the way out.
        os.kill(owner.pid, signum)
        owner.wait(timeout=15)
        assert _wait_gone(broker_pid), f"broker pid {broker_pid} outlived its owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if broker_pid is not None and not _gone(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)  # never leave an orphan behind a failed test
