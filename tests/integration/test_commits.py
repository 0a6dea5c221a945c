"""Commit safety of `geoincident worker` against a real Kafka-protocol broker (Tansu).

The group's committed offset of a reports partition must never pass the offset the worker has
processed (and produced the outputs of): if it did, a crash right then would lose records. A
sampler thread checks that every ~50 ms while reports stream in, across a kill -9 and across a
consumer-group rebalance. Each sample reads the committed offsets FIRST (OffsetFetch, without
joining the group) and the workers' `GET /stats` `next_offset` AFTER: processing only moves
forward, so `committed <= processed` at the later read is a sound check of the earlier one.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from tests.integration.workers import WorkerProcess, committed, create_topics, produce, topic_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
CHUNK = 10  # reports per produce() call
PACE_S = 0.1  # between chunks: ~100 reports/s, so the 1 s commits land mid-stream
SAMPLE_EVERY_S = 0.05


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A few thousand simulated city reports."""
    out = tmp_path_factory.mktemp("commits") / "reports.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "geoincident.stream.cli",
            "simulate",
            "--seed",
            "11",
            "--hours",
            "6",
            "--rate",
            "60",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    values = out.read_bytes().splitlines()
    assert len(values) >= 3000
    return values


@pytest.fixture
def group(bootstrap, topic_name, tmp_path):
    """Topics and a group with PARTITIONS partitions, and a factory of workers in that group
    (each with its own web port, data dir and log)."""
    names = topic_names(topic_name, PARTITIONS)
    create_topics(bootstrap, names)
    started: list[WorkerProcess] = []

    def make(label: str) -> WorkerProcess:
        workdir = tmp_path / label
        workdir.mkdir()
        worker = WorkerProcess(bootstrap, names, workdir)
        started.append(worker)
        return worker

    yield names, make
    for worker in started:
        worker.stop()


@dataclass
class Sample:
    phase: str
    committed: dict[int, int | None]
    # per ready worker (and "retired" for workers stopped after draining): next_offset claims
    claims: dict[str, dict[int, int]]

    def processed(self, partition: int) -> int:
        return max((c.get(partition, 0) for c in self.claims.values()), default=0)


@dataclass
class CommitWatch:
    """Samples committed offsets, then /stats of the watched workers, in a thread of its own.

    Only ready workers' claims count (before /ready a restarted worker reports its checkpoint,
    not yet caught up to what its previous life committed). A sample where a watched worker
    cannot be reached (killed, starting) is dropped.
    """

    bootstrap: str
    group: str
    topic: str
    partitions: int = PARTITIONS
    phase: str = "start"
    samples: list[Sample] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _live: dict[str, WorkerProcess] = field(default_factory=dict)
    _retired: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> CommitWatch:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        assert self._started.wait(30), f"the offset probe did not start: {self.errors}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def watch(self, label: str, worker: WorkerProcess) -> None:
        with self._lock:
            self._live[label] = worker

    def retire(self, label: str, claims: dict[int, int]) -> None:
        """Stop sampling a worker; what it had processed (nothing left to process, so this is
        final) still bounds what may be committed."""
        with self._lock:
            del self._live[label]
            for partition, offset in claims.items():
                self._retired[partition] = max(self._retired.get(partition, 0), offset)

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def of(self, phase: str) -> list[Sample]:
        return [s for s in self.samples if s.phase == phase]

    def assert_moving(self, phase: str, min_samples: int = 10, min_changes: int = 2) -> None:
        """The check ran while the committed offsets were moving: it cannot pass vacuously."""
        samples = self.of(phase)
        nonzero = [s for s in samples if any(s.committed.values())]
        changes = sum(a.committed != b.committed for a, b in pairwise(samples))
        assert len(nonzero) >= min_samples and changes >= min_changes, (
            f"{phase}: {len(samples)} samples, {len(nonzero)} with commits, "
            f"{changes} changes of the committed offsets; probe errors {self.errors[-5:]}"
        )

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
        )
        try:
            await consumer.start()  # no subscription: fetches offsets, never joins the group
        except Exception as error:  # noqa: BLE001 - reported by __enter__
            self.errors.append(repr(error))
            return
        self._started.set()
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        try:
            while not self._stop.is_set():
                try:
                    await self._sample(consumer, tps)
                except Exception as error:  # noqa: BLE001 - a lost sample, not a failure
                    self.errors.append(repr(error))
                await asyncio.sleep(SAMPLE_EVERY_S)
        finally:
            await consumer.stop()

    async def _sample(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        with self._lock:
            live, retired, phase = dict(self._live), dict(self._retired), self.phase
        if not live:
            return
        # 1. committed offsets first ...
        offsets = {tp.partition: await consumer.committed(tp) for tp in tps}
        # 2. ... then what the workers have processed (blocking HTTP: this thread only)
        claims: dict[str, dict[int, int]] = {}
        for label, worker in live.items():
            try:
                if worker.get("/ready")[0] != 200:
                    continue
                stats = worker.get("/stats")[1]
            except OSError:
                return  # killed or starting: no sound sample now
            claims[label] = {int(p): v["next_offset"] for p, v in stats["partitions"].items()}
        if not claims:
            return
        if retired:
            claims["retired"] = retired
        sample = Sample(phase, offsets, claims)
        self.samples.append(sample)
        passed = {
            p: (c, sample.processed(p))
            for p, c in offsets.items()
            if c is not None and c > sample.processed(p)
        }
        if passed:
            self.violations.append(
                f"[{phase}] sample {len(self.samples)}: committed > processed "
                f"(partition: (committed, processed)) {passed}; claims {claims}"
            )


def _partition_keys(partitions: int) -> list[bytes]:
    """A message key for each partition (the producer's default partitioner: murmur2)."""
    everything = list(range(partitions))
    keys: dict[int, bytes] = {}
    n = 0
    while len(keys) < partitions:
        key = b"chunk-%d" % n
        keys.setdefault(DefaultPartitioner()(key, everything, everything), key)
        n += 1
    return [keys[p] for p in everything]


class Feed:
    """The reports, produced in chunks to the partitions in turn, so that how many each
    partition holds is known exactly: Tansu's ListOffsets (end offsets) can lag the last batch
    of a partition, so they are no measure of what was produced."""

    def __init__(self, bootstrap: str, topic: str, values: list[bytes]) -> None:
        self.bootstrap, self.topic, self.values = bootstrap, topic, values
        self.keys = _partition_keys(PARTITIONS)
        self.sent = 0
        self.chunks = 0
        self.produced = dict.fromkeys(range(PARTITIONS), 0)

    @property
    def left(self) -> int:
        return len(self.values) - self.sent

    def send(self, count: int | None = None, pace_s: float = PACE_S) -> None:
        """The next `count` reports (all that are left by default), a chunk every `pace_s`."""
        stop = len(self.values) if count is None else min(len(self.values), self.sent + count)
        while self.sent < stop:
            partition = self.chunks % PARTITIONS
            chunk = self.values[self.sent : min(stop, self.sent + CHUNK)]
            produce(self.bootstrap, self.topic, chunk, key=self.keys[partition])
            self.sent += len(chunk)
            self.chunks += 1
            self.produced[partition] += len(chunk)
            if pace_s:
                time.sleep(pace_s)


def next_offsets(worker: WorkerProcess) -> dict[int, int]:
    partitions = worker.get("/stats")[1]["partitions"]
    return {int(p): v["next_offset"] for p, v in partitions.items()}


def assignments(log: Path) -> list[set[int]]:
    """The reports partitions of each `partitions_assigned` line of a worker's log, in order."""
    found = re.findall(r"event=partitions_assigned partitions=(\S+)", log.read_text("utf-8"))
    return [set() if p == "none" else {int(n) for n in p.split(",")} for p in found]


def ready(worker: WorkerProcess) -> bool:
    return worker.get("/ready")[0] == 200


def test_committed_offsets_never_pass_processed_ones_across_kill_9(bootstrap, lines, group):
    names, make = group
    topic, group_id = names["reports"], names["group"]
    worker = make("worker")
    feed = Feed(bootstrap, topic, lines)
    with CommitWatch(bootstrap, group_id, topic) as watch:
        worker.start()
        worker.wait_until(lambda: ready(worker))
        watch.watch("worker", worker)
        watch.set_phase("first life")
        feed.send(1500)
        worker.kill(signal.SIGKILL)  # mid-stream: what it processed since its last commit is lost
        watch.set_phase("down")
        feed.send(500, pace_s=0)
        worker.start()
        worker.wait_until(lambda: ready(worker))
        watch.set_phase("second life")
        feed.send()
        worker.wait_until(
            lambda: committed(bootstrap, group_id, topic, PARTITIONS) == feed.produced,
            timeout_s=120,
        )
        time.sleep(1)  # a few more samples once everything is committed
    assert not watch.violations, "\n".join(watch.violations[:10])
    watch.assert_moving("first life")
    watch.assert_moving("second life")
    assert feed.sent == len(lines) and next_offsets(worker) == feed.produced
    totals = worker.totals()
    assert sum(totals.values()) == len(lines), totals
    assert "event=checkpoint_restored" in worker.tail(10_000)


def test_a_second_worker_in_the_group_stops_both_until_one_is_left_and_commits_stay_true(
    bootstrap, lines, group
):
    names, make = group
    topic, group_id = names["reports"], names["group"]
    a, b = make("a"), make("b")
    feed = Feed(bootstrap, topic, lines)
    with CommitWatch(bootstrap, group_id, topic) as watch:
        a.start()
        a.wait_until(lambda: ready(a))
        watch.watch("a", a)
        watch.set_phase("a alone")
        feed.send(600)

        # B joins the group (same group id, its own web port): A and B split the partitions.
        # Detection split over two processes would miss the incidents whose reports landed on
        # the other one, so both stop processing, and say so, until the group is one again.
        b.start()
        watch.watch("b", b)
        watch.set_phase("a and b")
        a.wait_until(lambda: "event=group_shared" in a.tail(10_000), timeout_s=90)
        b.wait_until(lambda: "event=group_shared" in b.tail(10_000), timeout_s=90)
        assert not ready(a) and not ready(b)
        feed.send(500)
        held = committed(bootstrap, group_id, topic, PARTITIONS)
        time.sleep(3)
        assert committed(bootstrap, group_id, topic, PARTITIONS) == held
        b_totals = b.totals()
        assert sum(b_totals.values()) == 0, b_totals

        # B stops (it exits without committing what it waited on): A takes everything back.
        watch.retire("b", {})  # it processed nothing, so it bounds no commit
        b.process.send_signal(signal.SIGTERM)
        b.process.wait(timeout=30)
        assert b.process.returncode in (0, 70), b.tail()
        watch.set_phase("a again")
        a.wait_until(lambda: assignments(a.log_path)[-1] == set(range(PARTITIONS)), timeout_s=60)
        a.wait_until(lambda: ready(a), timeout_s=60)
        assert "event=group_whole" in a.tail(10_000)
        feed.send()
        a.wait_until(
            lambda: committed(bootstrap, group_id, topic, PARTITIONS) == feed.produced,
            timeout_s=120,
        )
        a.wait_until(lambda: next_offsets(a) == feed.produced, timeout_s=60)
        time.sleep(1)
    assert not watch.violations, "\n".join(watch.violations[:10])
    for phase in ("a alone", "a again"):
        watch.assert_moving(phase)

    # The rebalance really happened: B got some partitions, A gave some up and got them back.
    a_assigned, b_assigned = assignments(a.log_path), assignments(b.log_path)
    everything = set(range(PARTITIONS))
    assert any(0 < len(s) < PARTITIONS for s in b_assigned), b_assigned
    assert a_assigned[0] == everything and a_assigned[-1] == everything, a_assigned
    assert any(0 < len(s) < PARTITIONS for s in a_assigned), a_assigned

    # No record lost: each one processed by at least one of them.
    assert feed.sent == len(lines)
    a_totals = a.totals()
    assert sum(a_totals.values()) >= len(lines), a_totals
