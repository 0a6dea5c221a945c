"""`geoincident notify` against the real embedded broker (Tansu): one delivery per
(incident_id, version) although the worker produced one event twice, offsets committed once the
deliveries are done, and nothing sent again after a restart, in the same group (the committed
offsets) or in a new one (the state file)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from geoincident.stream.config import Settings, load_settings
from geoincident.stream.notify import run_notify
from tests.builders import SPOT, ring, run
from tests.integration.workers import committed, create_topics, produce, topic_names
from tests.stream.test_notify import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 2


def incident_events() -> list[bytes]:
    """Two incidents from the detector: a streetlight (opened, three updates) and a pothole."""
    reports = ring(8, 30) + ring(
        5, 30, centre=(SPOT[0] + 0.01, SPOT[1]), prefix="q", category="pothole", start_minute=2
    )
    return [event.to_json() for event in run(reports)]


def produce_events(bootstrap: str, topic: str, values: list[bytes]) -> Counter[int]:
    """Each event keyed by its incident_id, as the worker does; how many went to each
    partition (Tansu's end offsets cannot be trusted, contract of tests/integration)."""
    per_partition: Counter[int] = Counter()
    everything = list(range(PARTITIONS))
    for value in values:
        key = orjson.loads(value)["incident_id"].encode()
        produce(bootstrap, topic, [value], key=key)
        per_partition[DefaultPartitioner()(key, everything, everything)] += 1
    return per_partition


def settings_for(bootstrap: str, topic: str, group: str, url: str, state_dir: str) -> Settings:
    return load_settings(
        overrides={
            "kafka.brokers": bootstrap,
            "topics.incidents": topic,
            "notify": {
                "consumer_group": group,
                "state_dir": state_dir,
                "timeout_s": 5.0,
                "max_attempts": 3,
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05,
                "webhooks": [{"name": "dispatch", "url": url}],
            },
        }
    )


async def notify_until(
    settings: Settings,
    options: dict[str, Any],
    done: Any,
    timeout_s: float = 60.0,
    settle_s: float = 1.0,
) -> None:
    """Run the notifier until `done()` holds (then `settle_s` more), then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_notify(settings, stop=stop, consumer_options=options))
    deadline = time.monotonic() + timeout_s
    try:
        while not await done():
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "the notifier did not get there in time"
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle_s)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_notify_delivers_once_commits_and_resends_nothing(
    bootstrap, topic_name, tmp_path, fast_group_options
):
    names = topic_names(topic_name, PARTITIONS)
    create_topics(bootstrap, names)
    topic, group = names["incidents"], topic_name("notify")
    events = incident_events()
    assert len(events) == 5
    duplicate = orjson.loads(events[0])  # the worker produced it again after a restart
    duplicate["emitted_at"] = "2030-01-01T00:00:00.000Z"
    produced = produce_events(bootstrap, topic, [*events, orjson.dumps(duplicate)])
    assert sum(produced.values()) == 6
    expected_keys = [f"{e['incident_id']}:{e['version']}" for e in map(orjson.loads, events)]
    state_dir = str(tmp_path / "notify-state")
    receiver = Receiver()

    async def committed_offsets(group_id: str) -> dict[int, int | None]:
        return await asyncio.to_thread(committed, bootstrap, group_id, topic, PARTITIONS)

    async def scenario() -> None:
        await receiver.start()
        try:
            settings = settings_for(bootstrap, topic, group, receiver.url(), state_dir)

            async def all_delivered() -> bool:
                return len(receiver.requests) >= len(events)

            await notify_until(settings, fast_group_options, all_delivered)
            keys = [r.key for r in receiver.requests]
            assert sorted(keys) == sorted(expected_keys)  # one each, the duplicate dropped
            assert all(r.status == 200 for r in receiver.requests)
            # per incident, in version order
            streetlight = [k for k in keys if k.startswith(expected_keys[0].split(":")[0])]
            assert streetlight == [k for k in expected_keys if k in streetlight]
            assert {r.body for r in receiver.requests} == set(events)

            # stopped: the group's committed offsets cover every record, the duplicate too
            offsets = await committed_offsets(group)
            assert offsets == {p: produced.get(p, 0) or None for p in range(PARTITIONS)}

            # a restart in the same group sends nothing again; a new event still goes out
            later = orjson.loads(events[-1])
            later.update(event="resolved", version=later["version"] + 1, status="resolved")
            later["resolved_reason"] = "dispatcher"
            extra = await asyncio.to_thread(produce_events, bootstrap, topic, [orjson.dumps(later)])
            for partition, count in extra.items():
                produced[partition] += count

            async def new_one_delivered() -> bool:
                return len(receiver.requests) > len(events)

            await notify_until(settings, fast_group_options, new_one_delivered)
            assert [r.key for r in receiver.requests[len(events) :]] == [
                f"{later['incident_id']}:{later['version']}"
            ]
            offsets = await committed_offsets(group)
            assert offsets == {p: produced.get(p, 0) or None for p in range(PARTITIONS)}

            # a new group reads everything again: the state file keeps it from being re-sent
            fresh = topic_name("notify-fresh")
            again = settings_for(bootstrap, topic, fresh, receiver.url(), state_dir)

            async def all_read() -> bool:
                offsets = await committed_offsets(fresh)
                return all(offsets[p] == produced[p] for p in produced)

            await notify_until(again, fast_group_options, all_read, settle_s=0.5)
            assert len(receiver.requests) == len(events) + 1
        finally:
            await receiver.stop()

    asyncio.run(scenario())
