"""A checkpoint never records a step whose outputs the broker has not acknowledged.

The worker's steps (a batch of reports, an action, the 1-second timer) run on one event loop;
while a batch waits for the acks of its outputs, the timer may fire. A race like this cannot be
made to happen on cue with a real broker, so here the broker's two calls are replaced: the
produce call waits until the test releases it, and the group's committed offsets are 0. The
rest (Worker, WorkerCore, Detector, the checkpoint) is the real code.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

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
        if worker._writing is not None or CHECKPOINT_KEY in worker.state:
            happened.append("checkpoint taken")
        release.set()
        await asyncio.gather(batch, tick)
        await worker.checkpoint_written()  # encoded between steps, written after
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


def _actions_read_directly(worker: Worker, actions: list) -> tuple[list, list]:
    """The broker's calls of a worker replaced: the group committed nothing yet, what it
    produces is kept (the actions DLQ: each action for an unknown incident is answered once),
    and a direct read of the actions partition gives `actions`. Returns (reads, answers)."""
    reads: list = []
    refused: list = []

    async def committed_offsets(topic, partitions=None):
        return {0: 0}

    async def produce(out):
        refused.extend(out.action_dlq)

    async def read_range(topic, partition, start, end):
        reads.append((topic, partition, start, end))
        return actions[start:end]

    worker.committed_offsets = committed_offsets
    worker.produce = produce
    worker.read_range = read_range
    return reads, refused


class _StalledConsumer:
    """The group consumer as _unstall sees it: an assignment, a high watermark, and Faust's
    offset bookkeeping (what batching.acknowledge writes to)."""

    def __init__(self, assigned, highwater: int, position: int) -> None:
        from collections import defaultdict

        self.assigned = assigned
        self.end = highwater
        self.at = position
        self.gaps: list[tuple[int, int]] = []
        self._committed_offset = defaultdict(lambda: None)
        self._acked_index = defaultdict(set)
        self._acked = defaultdict(list)
        self._n_acked = 0

    def assignment(self):
        return set(self.assigned)

    def highwater(self, tp):
        return self.end

    def topic_partitions(self, topic):
        return 1

    async def position(self, tp):
        return self.at

    async def _add_gap(self, tp, start, end):
        self.gaps.append((start, end))


@pytest.mark.parametrize(
    ("highwater", "position"),
    [(10, 4), (10, 10), (5, 10)],  # (5, 10): a broker reporting a loose end (Tansu)
)
def test_a_partition_the_consumer_stopped_delivering_is_read_directly(
    tmp_path, monkeypatch, highwater, position
):
    """Faust can drop a batch after a seek and deliver nothing more when nothing more comes
    (the end of a burst of actions): the timer reads what is behind (up to the end the consumer
    heard of, or its position, whichever is further) and processes it, once, and books it for
    Faust's commit. The broker's calls are replaced; the rest is real."""
    from faust.types import TP

    from geoincident.stream import app as app_module

    monkeypatch.setattr(app_module, "STALL_S", 0.0)

    async def scenario() -> tuple[list, list, _StalledConsumer, list]:
        settings = load_settings(overrides={"worker.data_dir": str(tmp_path)})
        worker = Worker(settings)
        worker.state = {}
        topic = settings.topics.actions
        actions = [
            (
                offset,
                orjson.dumps(
                    {
                        "action_id": f"a{offset}",
                        "incident_id": "inc-none",
                        "action": "ack",
                        "by": "d1",
                        "at": "2026-12-02T10:00:00Z",
                    }
                ),
                0,
            )
            for offset in range(10)
        ]
        reads, refused = _actions_read_directly(worker, actions)
        consumer = _StalledConsumer([TP(topic, 0)], highwater, position)
        monkeypatch.setattr(type(worker.app), "consumer", consumer, raising=False)
        await worker.ensure_restored()
        for offset, value, _ in actions[:4]:  # delivered; then the consumer goes quiet
            await worker.on_action(value, 0, offset)
        await worker._unstall()  # behind: noted
        before = list(reads)
        await worker._unstall()  # still behind, nothing moved: read
        await worker._unstall()  # caught up: nothing more
        for offset, value, _ in actions[4:]:  # delivered late after all: skipped by offset
            await worker.on_action(value, 0, offset)
        return before, reads, consumer, refused

    before, reads, consumer, refused = asyncio.run(scenario())
    topic = load_settings().topics.actions
    assert before == []
    assert reads == [(topic, 0, 4, 10)]
    assert [orjson.loads(r)["offset"] for r in refused] == list(range(10))
    # offsets 4..8 a gap and 9 acked: Faust's commit moves to 10
    assert consumer.gaps == [(4, 8)] and dict(consumer._acked) == {TP(topic, 0): [9]}


def test_a_slow_checkpoint_spaces_out_the_next_ones():
    from geoincident.stream.app import checkpoint_interval

    assert checkpoint_interval(0.001) == 1.0  # a few kB: once a second
    assert checkpoint_interval(0.08) == pytest.approx(1.6)  # 5 % of the time at most
    assert checkpoint_interval(10.0) == 30.0  # a restart never reads more than 30 s again
    # four routed partitions checkpointing on their own share the 5 % between them
    assert checkpoint_interval(0.02, partitions=4) == pytest.approx(1.6)
    assert checkpoint_interval(0.02, partitions=1) == 1.0
    assert checkpoint_interval(0.001, partitions=0) == 1.0


def test_an_actions_partition_missing_from_the_assignment_is_read_while_alone(
    tmp_path, monkeypatch
):
    """A safeguard: the only process of its group owns every actions partition, so
    one the consumer does not hold is looked at directly and what is there is applied, once;
    Faust's commit bookkeeping is left alone (the checkpoint holds the offsets applied)."""

    from geoincident.stream import app as app_module

    monkeypatch.setattr(app_module, "STALL_S", 0.0)

    async def scenario() -> tuple[list, list, _StalledConsumer]:
        settings = load_settings(overrides={"worker.data_dir": str(tmp_path)})
        worker = Worker(settings)
        worker.state = {}
        actions = [
            (offset, orjson.dumps({"action": "ack", "incident_id": "inc-none", "by": "d"}), 0)
            for offset in range(6)
        ]
        reads, refused = _actions_read_directly(worker, actions)

        async def peek_end(topic_, partition, start, now):
            return len(actions)

        worker._peek_end = peek_end
        consumer = _StalledConsumer([], highwater=0, position=0)  # holds nothing
        monkeypatch.setattr(type(worker.app), "consumer", consumer, raising=False)
        await worker.ensure_restored()
        for _ in range(3):
            await worker._unstall()
        return reads, refused, consumer

    reads, refused, consumer = asyncio.run(scenario())
    assert reads == [(load_settings().topics.actions, 0, 0, 6)]
    assert [orjson.loads(r)["offset"] for r in refused] == list(range(6))
    assert consumer.gaps == [] and not consumer._acked


def _known_reporters_worker(tmp_path, table: dict) -> Worker:
    """A worker whose broker calls are replaced (nothing committed, produce does nothing),
    writing its checkpoints to `table`, with the reputation of 2,000 reporters."""
    worker = Worker(load_settings(overrides={"worker.data_dir": str(tmp_path)}))
    worker.state = table

    async def committed_offsets(topic, partitions=None):
        return {0: 0}

    async def produce(out):
        pass

    worker.committed_offsets = committed_offsets
    worker.produce = produce
    for n in range(2_000):
        worker.core.detector.reputation.uncorroborated(f"earlier-{n}", 1_795_510_000_000)
    return worker


def test_a_large_checkpoint_is_encoded_between_other_work_and_written_in_order(
    tmp_path, monkeypatch
):
    """A checkpoint's reputation is encoded a slice at a time with the event loop free in
    between (here 100 reporters a slice, 2,000 reporters: 21 steps), holds the state of when it
    was taken, and a forced checkpoint (an action's) taken meanwhile is written after it."""
    from geoincident.stream import checkpoint as codec

    monkeypatch.setattr(codec, "REPUTATION_SLICE", 100)

    async def scenario() -> tuple[int, list[tuple[int, int]]]:
        written: list[tuple[int, int]] = []

        class Table(dict):
            def __setitem__(self, key, value):
                if key == CHECKPOINT_KEY:
                    checkpoint = decode(value)
                    written.append((checkpoint["seq"], len(checkpoint["detector"]["reputation"])))
                super().__setitem__(key, value)

        worker = _known_reporters_worker(tmp_path, Table())
        reputation = worker.core.detector.reputation
        await worker.on_reports(0, _records(5))  # the first checkpoint is due: it begins
        first = worker._writing
        assert first is not None and not first.done()
        reputation.restore({})  # the next one is small: written first, were it not chained
        async with worker._step:
            forced = worker.begin_checkpoint(force=True)
        assert forced is not None
        turns = 0
        while not first.done():
            turns += 1
            await asyncio.sleep(0)
        await forced
        return turns, written

    turns, written = asyncio.run(scenario())
    assert turns >= 20  # the loop ran other work while the first one was encoded
    assert written == [(1, 2_000), (2, 0)]


def test_a_checkpoint_still_being_encoded_at_a_graceful_stop_is_dropped(tmp_path, monkeypatch):
    """The consumer has left the group by then: the next owner may be restoring, so nothing
    more is written (the offsets committed past the last checkpoint are taken in again)."""
    from geoincident.stream import checkpoint as codec

    monkeypatch.setattr(codec, "REPUTATION_SLICE", 100)

    async def scenario() -> tuple[bool, bool]:
        worker = _known_reporters_worker(tmp_path, {})
        await worker.on_reports(0, _records(5))
        writing = worker._writing
        assert writing is not None and not writing.done()
        await worker._on_shutdown(worker.app)
        with contextlib.suppress(asyncio.CancelledError):
            await writing
        async with worker._step:  # and none begins any more
            assert worker.begin_checkpoint(force=True) is None
        await asyncio.sleep(0.05)
        return writing.cancelled(), CHECKPOINT_KEY in worker.state

    assert asyncio.run(scenario()) == (True, False)


def test_a_checkpoint_written_after_its_step_is_filed_under_that_steps_event(tmp_path):
    """The RocksDB store files a table write under the partition of the event being
    processed, which it finds through a weak reference: the write comes after the agent
    moved on, so the checkpoint keeps the event of its step alive until it is written."""
    import gc
    import weakref

    import faust
    from faust.streams import _current_event

    class Event:
        pass

    async def scenario() -> list:
        found: list = []

        class Table(dict):
            def __setitem__(self, key, value):
                found.append(faust.current_event())
                super().__setitem__(key, value)

        worker = _known_reporters_worker(tmp_path, Table())

        async def step() -> None:  # as the reports agent does
            event = Event()
            _current_event.set(weakref.ref(event))
            await worker.on_reports(0, _records(5))

        await asyncio.create_task(step())
        gc.collect()  # the step's event has no other reference left
        await worker.checkpoint_written()
        return found

    found = asyncio.run(scenario())
    assert found and all(isinstance(event, Event) for event in found)


def test_actions_the_group_skipped_are_read_and_applied_in_order(tmp_path):
    """Faust can drop a batch of actions it delivered right after a seek and deliver the next
    one: the skipped actions are read from the topic and applied first, in order, each once
    (before, they were never applied: a later offset moved the next offset past them)."""

    async def scenario() -> tuple[list, list]:
        worker = Worker(load_settings(overrides={"worker.data_dir": str(tmp_path)}))
        worker.state = {}
        actions = [
            (offset, orjson.dumps({"action": "ack", "incident_id": "inc-none", "by": "d"}), 0)
            for offset in range(9)
        ]
        reads, refused = _actions_read_directly(worker, actions)
        await worker.ensure_restored()
        for offset, value, _ in [*actions[:4], actions[8], *actions[4:8]]:  # 4..7 come late
            await worker.on_action(value, 0, offset)
        return reads, refused

    reads, refused = asyncio.run(scenario())
    topic = load_settings().topics.actions
    assert reads == [(topic, 0, 4, 8)]
    # each answered once (an unknown incident: the actions DLQ), in offset order
    assert [orjson.loads(r)["offset"] for r in refused] == list(range(9))
