"""Batch delivery for Faust: each fetched per-partition record batch reaches the agent as one
event, instead of one event per record.

Stock Faust awaits every single record through `wait_first(callback(message), ...)` and then
runs the conductor, stream iterator, sensors and an ack per record: on a 2-core machine that
caps a per-event agent at a few thousand records/s however fast the job is. Delivering the
batch as one event (value = list of `(offset, value, timestamp_ms)`, offset = the batch's last)
and registering the offsets before it as a gap lets Faust's own commit logic commit `last + 1`
once the batch event is acked: at-least-once holds, and the per-record cost is our own code's.

This uses private internals of faust-streaming's consumer (`_drain_messages`,
`_wait_next_records`, `_add_gap`, `_to_message`, `_read_offset`, `suspend_flow`, `flow_active`,
`perform_seek`, `_buffered_partitions`, `_commit_every`, `_n_acked`, `_acked`, `_acked_index`,
`_committed_offset` (as `ack` books an offset), and the consumer thread's
`_create_worker_consumer` with aiokafka's `_fetch_max_wait_ms`): the version is pinned
exactly in pyproject.toml and tests/stream/test_batching.py fails when they change.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from faust.serializers import codecs
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.types.tuples import Message
from mode import Service

BATCH_CODEC = "geoincident-batch"


class _PassThrough(codecs.Codec):
    """The batch event's value is already a Python list: decode nothing."""

    def _loads(self, s: Any) -> Any:
        return s

    def _dumps(self, s: Any) -> Any:
        return s


codecs.register(BATCH_CODEC, _PassThrough())


# Faust creates its group consumer with fetch_max_wait_ms=1500. Some brokers (Tansu) hold a
# fetch for much of that wait even when records have arrived, which put most of a second into
# the detection latency at low rates; 25 ms costs at most 40 empty fetches a second when idle.
FETCH_MAX_WAIT_MS = 25


class _ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class BatchingConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, with batch delivery for the topics in `batch_topics`."""

    batch_topics: frozenset[str] = frozenset()

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - in integration
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        batch_topics = self.batch_topics
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                records, active_partitions = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if records is None or self.should_stop:
                    unset_flag(CONSUMER_FETCHING)
                    continue
                if not self.flow_active:
                    # as stock getmany does: a rebalance paused the flow; go back to committed
                    try:
                        await self.perform_seek()
                    except Exception as exc:  # noqa: BLE001 - stock behaviour: log and go on
                        self.log.warning(f"seek while flow not active failed: {exc}")
                    unset_flag(CONSUMER_FETCHING)
                    continue
                generation_id = self.app.consumer_generation_id
                for tp, tp_records in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation_id:
                        break
                    if (
                        active_partitions is not None
                        and tp not in active_partitions
                        and tp not in self._buffered_partitions
                    ):
                        continue
                    r_offset = read_offset[tp]
                    fresh = [
                        record
                        for record in tp_records
                        if r_offset is None or record.offset >= r_offset
                    ]
                    if not fresh:
                        continue
                    if tp.topic in batch_topics:
                        await self._deliver_batch(tp, fresh, r_offset, acks_enabled_for)
                    else:
                        await self._deliver_each(tp, fresh, acks_enabled_for)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _deliver_batch(
        self, tp: TP, fresh: list[Any], r_offset: int | None, acks_enabled_for: Any
    ) -> None:
        first = fresh[0].offset
        last = fresh[-1].offset
        if acks_enabled_for(tp.topic):
            # Offsets before `last` (and any hole since the previous read) count as done
            # once the batch event, which carries `last`, is acked.
            start = first if r_offset is None else min(first, r_offset + 1)
            if start <= last - 1:
                await self._add_gap(tp, start, last - 1)
        tail = fresh[-1]
        message = self._to_message(tp, tail)
        message.value = [(r.offset, r.value, r.timestamp) for r in fresh]
        message.serialized_value_size = sum(r.serialized_value_size for r in fresh)
        await self._maybe_commit()
        await self.wait_first(self.callback(message), self.suspend_flow.wait())
        self._read_offset[tp] = last

    async def _deliver_each(self, tp: TP, fresh: list[Any], acks_enabled_for: Any) -> None:
        """The stock per-record path (changelogs, actions)."""
        read_offset = self._read_offset
        for record in fresh:
            offset = record.offset
            r_offset = read_offset[tp]
            gap = offset - (r_offset or 0)
            if gap > 1 and r_offset and acks_enabled_for(record.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            await self._maybe_commit()
            await self.wait_first(
                self.callback(self._to_message(tp, record)), self.suspend_flow.wait()
            )
            read_offset[tp] = offset

    async def _maybe_commit(self) -> None:
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()


async def acknowledge(consumer: Any, tp: TP, start: int, end: int) -> None:
    """Count offsets [start, end) of `tp`, processed outside the stream (read directly by the
    worker), as acknowledged: Faust's commit logic then commits past them as it does past a
    delivered batch (the offsets before the last as a gap, the last as acked, as Consumer.ack
    books it)."""
    last = end - 1
    if last < start:
        return
    if start <= last - 1:
        await consumer._add_gap(tp, start, last - 1)
    committed = consumer._committed_offset[tp]
    if committed is None or last >= committed:
        acked_index = consumer._acked_index[tp]
        if last not in acked_index:
            acked_index.add(last)
            consumer._acked[tp].append(last)
            consumer._n_acked += 1


def install(app: Any, batch_topics: set[str]) -> None:
    """Use batch delivery for `batch_topics`; call before the app starts."""
    consumer_class = type(
        "GeoincidentConsumer", (BatchingConsumer,), {"batch_topics": frozenset(batch_topics)}
    )
    app.transport.Consumer = consumer_class


__all__ = ["BATCH_CODEC", "BatchingConsumer", "Message", "install"]
