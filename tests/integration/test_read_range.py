"""Reading a range of the input again (rebuild, catch-up, gap filling) is all or nothing: a
range the broker cannot deliver in full fails loudly instead of passing as complete, because
what follows would acknowledge offsets that were never processed."""

from __future__ import annotations

import asyncio

import pytest

from geoincident.stream import app
from geoincident.stream.app import ShortRead, Worker
from geoincident.stream.config import load_settings
from tests.integration.workers import create_topics, produce, topic_names


@pytest.fixture
def worker(bootstrap, topic_name, tmp_path):
    names = topic_names(topic_name)
    create_topics(bootstrap, names)
    settings = load_settings(
        overrides={
            "kafka.brokers": bootstrap,
            "kafka.group_id": names["group"],
            "topics.reports": names["reports"],
            "topics.incidents": names["incidents"],
            "topics.reports_dlq": names["reports_dlq"],
            "topics.actions": names["actions"],
            "topics.actions_dlq": names["actions_dlq"],
            "topics.partitions": 1,
            "worker.data_dir": str(tmp_path / "data"),
        }
    )
    produce(bootstrap, names["reports"], [f"value-{n}".encode() for n in range(3)])
    return Worker(settings)


def test_a_range_that_exists_is_read_in_full(worker):
    records = asyncio.run(worker.read_range(worker.settings.topics.reports, 0, 0, 3))
    assert [(offset, value) for offset, value, _ in records] == [
        (0, b"value-0"),
        (1, b"value-1"),
        (2, b"value-2"),
    ]
    assert asyncio.run(worker.read_range(worker.settings.topics.reports, 0, 1, 2))[0][:2] == (
        1,
        b"value-1",
    )


def test_a_range_past_the_end_of_the_partition_fails_naming_it(worker, monkeypatch):
    monkeypatch.setattr(app, "READ_RANGE_IDLE_POLLS", 10)  # 2 s of silence, not 30
    with pytest.raises(ShortRead, match=r"partition 0 .*offsets \[0, 6\).*got up to 3.*3 attempts"):
        asyncio.run(worker.read_range(worker.settings.topics.reports, 0, 0, 6))


def test_a_stalled_read_is_retried_and_completes_when_the_records_arrive(worker, monkeypatch):
    monkeypatch.setattr(app, "READ_RANGE_IDLE_POLLS", 10)  # stalls after 2 s of silence
    topic = worker.settings.topics.reports

    async def scenario():
        reading = asyncio.create_task(worker.read_range(topic, 0, 0, 5))
        await asyncio.sleep(3.0)  # the first attempt has stalled by now
        assert not reading.done()
        await asyncio.to_thread(
            produce, worker.settings.kafka.brokers, topic, [b"value-3", b"value-4"]
        )
        return await reading

    records = asyncio.run(scenario())
    assert [value for _, value, _ in records] == [f"value-{n}".encode() for n in range(5)]
