"""A changelog record that is not a checkpoint is refused by name (real Tansu broker).

Whoever can write the state changelog could, with a pickled checkpoint, run code in the
worker. The checkpoint is typed data now; this writes a record that is not one (a pickle whose
loading would create a file) where the worker reads its state, and checks the worker refuses
it naming the topic, partition and offset, runs none of it, and exits instead of processing.
"""

from __future__ import annotations

import asyncio
import os
import pickle

import pytest
from aiokafka import AIOKafkaProducer

from geoincident.stream.app import CHECKPOINT_KEY, EXIT_BAD_CHECKPOINT
from tests.builders import line, ring
from tests.integration.workers import WorkerProcess, create_topics, produce, topic_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class _Planted:
    """Unpickling this calls os.system: proof that a pickle would have run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _write(bootstrap: str, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
    async def run() -> tuple[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            metadata = await producer.send_and_wait(topic, value, key=key, partition=0)
            return metadata.partition, metadata.offset
        finally:
            await producer.stop()

    return asyncio.run(run())


def test_a_changelog_record_that_is_not_a_checkpoint_is_refused_naming_it(
    bootstrap, topic_name, tmp_path
):
    names = topic_names(topic_name, 1)
    create_topics(bootstrap, names)
    worker = WorkerProcess(bootstrap, names, tmp_path)
    worker.start()
    try:
        worker.wait_until(lambda: worker.get("/ready")[0] == 200)
        produce(bootstrap, names["reports"], [line(r) for r in ring(5, 30)])
        worker.wait_until(lambda: "event=checkpoint seq=" in worker.tail(10_000))
    finally:
        worker.stop()
    changelog = f"{names['group']}-state-changelog"
    assert f"topic={changelog}" not in worker.tail(10_000)  # nothing refused so far

    ran = tmp_path / "pickle-ran"
    partition, offset = _write(
        bootstrap, changelog, CHECKPOINT_KEY, pickle.dumps({"x": _Planted(str(ran))})
    )
    worker.start()
    assert worker.process is not None
    assert worker.process.wait(90) == EXIT_BAD_CHECKPOINT, worker.tail()
    log = worker.tail(10_000)
    assert "event=checkpoint_refused" in log, log
    assert f"topic={changelog} partition={partition} offset={offset}" in log, log
    assert "not a geoincident checkpoint" in log
    assert "Traceback" not in log
    assert not ran.exists(), "the record's pickle ran in the worker"
