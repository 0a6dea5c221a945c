"""A checkpoint never records a step whose outputs the broker has not acknowledged.

The worker's steps (a batch of reports, an action, the 1-second timer) run on one event loop;
while a batch waits for the acks of its outputs, the timer may fire. A race like this cannot be
made to happen on cue with a real broker, so here the broker's two calls are replaced: the
produce call waits until the test releases it, and the group's committed offsets are 0. The
rest (Worker, WorkerCore, Detector, the checkpoint) is the real code.
"""

from __future__ import annotations

import asyncio

import orjson

from geoincident.stream.app import CHECKPOINT_KEY, Worker
from geoincident.stream.checkpoint import decode
from geoincident.stream.config import load_settings


def _records(count: int) -> list[tuple[int, bytes, int]]:
    return [
        (
            offset,
            orjson.dumps(
                {
                    "id": f"r{offset}",
                    "ts": 1_795_510_800_000 + offset * 1000,
                    "lat": 47.6,
                    "lon": -122.3,
                    "reporter": f"u{offset}",
                    "tags": ["#lightout"],
                }
            ),
            0,
        )
        for offset in range(count)
    ]


def test_a_checkpoint_waits_for_the_step_whose_outputs_are_in_flight(tmp_path):
    async def scenario() -> list[str]:
        worker = Worker(load_settings(overrides={"worker.data_dir": str(tmp_path)}))
        worker.state = {}  # the checkpoint table
        happened: list[str] = []
        release = asyncio.Event()

        async def committed_offsets(topic, partitions=None):
            return {0: 0}

        async def produce(out):
            if out.incidents or out.dlq:
                happened.append("produce waits for acks")
                await release.wait()
                happened.append("acks arrived")

        worker.committed_offsets = committed_offsets
        worker.produce = produce
        # a malformed record makes the batch produce (a dead letter) and wait for its ack
        records = [*_records(5), (5, b"{not json", 0)]
        batch = asyncio.create_task(worker.on_reports(0, records))
        await asyncio.sleep(0.05)  # the batch is now waiting for its acks
        tick = asyncio.create_task(worker.on_tick(checkpoint=True))
        await asyncio.sleep(0.05)
        if CHECKPOINT_KEY in worker.state:
            happened.append("checkpoint written")
        release.set()
        await asyncio.gather(batch, tick)
        checkpoint = decode(worker.state[CHECKPOINT_KEY])
        assert checkpoint["partitions"][0]["next_offset"] == 6
        return happened

    happened = asyncio.run(scenario())
    # no checkpoint while the batch's dead letter was unacknowledged; one right after
    assert happened == ["produce waits for acks", "acks arrived"]


def test_a_worker_sharing_its_group_neither_processes_nor_advances_event_time(tmp_path):
    """With another process in the group (a partial assignment), reports wait and the timer
    resolves nothing: two processes would each decide on their own. The broker's calls are
    replaced as above; the assignment comes from the rebalance callback."""
    from faust.types import TP

    async def scenario() -> tuple[list, bool, list]:
        settings = load_settings(overrides={"worker.data_dir": str(tmp_path)})
        worker = Worker(settings)
        worker.state = {}
        produced: list = []

        async def committed_offsets(topic, partitions=None):
            return {0: 0}

        async def produce(out):
            produced.append(out)

        worker.committed_offsets = committed_offsets
        worker.produce = produce
        worker.reports_partition_count = lambda: 2
        await worker.ensure_restored()
        await worker._on_assigned(None, {TP(settings.topics.reports, 0)})
        batch = asyncio.create_task(worker.on_reports(0, _records(5)))
        await asyncio.sleep(0.05)
        waiting = not batch.done()
        await worker.on_tick(checkpoint=True)
        during = list(produced)
        both = {TP(settings.topics.reports, 0), TP(settings.topics.reports, 1)}
        await worker._on_assigned(None, both)  # the other process left
        await asyncio.wait_for(batch, 5)
        return during, waiting, [worker.ready, worker.core.totals["accepted"]]

    during, waiting, after = asyncio.run(scenario())
    assert waiting and during == []
    assert after == [True, 5]
