"""The batch delivery leans on faust-streaming's private consumer internals, and routing
(stream/sharded.py) on its producer's: pin them.

If any of these fails after an upgrade, re-read stream/batching.py against the new Faust
consumer (and `ShardedWorker._send_routed` against its producer), re-run the kill -9 test
(tests/integration/test_worker.py) and the scale-out tests, then update the digests.
"""

import hashlib
import inspect
from importlib.metadata import version

import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from geoincident.stream.batching import BatchingConsumer

# sha256 (16 hex) of the source of each stock routine the batch path mirrors or relies on.
PINNED_SOURCES = {
    "_drain_messages": (faust_consumer.Consumer._drain_messages, "44a2500309e83c63"),
    "_add_gap": (faust_consumer.Consumer._add_gap, "4df2573ded7c1c2c"),
    "_new_offset": (faust_consumer.Consumer._new_offset, "1d2c7ea89a7ad4f1"),
    "ack": (faust_consumer.Consumer.ack, "5fcf41cf45153475"),  # batching.acknowledge books alike
    "_wait_next_records": (faust_consumer.Consumer._wait_next_records, "6218e1969a636b3f"),
    "getmany": (faust_consumer.Consumer.getmany, "4b168d84882a70d6"),
    "_to_message": (faust_aiokafka.Consumer._to_message, "7c24f6511b2fcef7"),
    "_new_consumer_thread": (faust_aiokafka.Consumer._new_consumer_thread, "0870ec53dea75083"),
    "_create_worker_consumer": (
        faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer,
        "c2701bfc3e6f6cad",
    ),
    # routing sends its batches of records on the aiokafka producer this gives
    "_ensure_producer": (faust_aiokafka.Producer._ensure_producer, "5592a4bbdf251325"),
}


def test_faust_streaming_is_the_pinned_version():
    assert version("faust-streaming") == "0.15.3"


@pytest.mark.parametrize("name", sorted(PINNED_SOURCES))
def test_the_stock_consumer_internals_are_unchanged(name):
    routine, digest = PINNED_SOURCES[name]
    assert hashlib.sha256(inspect.getsource(routine).encode()).hexdigest()[:16] == digest


def test_the_consumer_state_the_batch_path_uses_still_exists():
    init = inspect.getsource(faust_consumer.Consumer.__init__)
    for attribute in (
        "_read_offset",
        "_buffered_partitions",
        "_commit_every",
        "_gap",
        "_acked",
        "_acked_index",
        "_committed_offset",
    ):
        assert f"self.{attribute}" in init, attribute
    assert faust_consumer.Consumer.__annotations__["_n_acked"] is int
    for member in ("suspend_flow", "flow_active", "perform_seek", "consumer_stopped_errors"):
        assert hasattr(faust_consumer.Consumer, member) or member in inspect.getsource(
            faust_consumer.Consumer
        ), member


def test_aiokafka_still_reads_the_fetch_wait_from_where_it_is_set():
    from aiokafka.consumer.consumer import AIOKafkaConsumer

    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    assert version("aiokafka") == "0.14.0"


def test_routing_sends_batches_on_the_producer_faust_started():
    from aiokafka import AIOKafkaProducer

    source = inspect.getsource(faust_aiokafka.Producer.on_start)
    assert "producer = self._producer = self._new_producer()" in source
    for method in ("create_batch", "send_batch"):
        assert callable(getattr(AIOKafkaProducer, method)), method


def test_the_batching_consumer_is_the_aiokafka_driver_consumer():
    assert issubclass(BatchingConsumer, faust_aiokafka.Consumer)
