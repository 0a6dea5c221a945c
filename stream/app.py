"""The Faust application: topics, the agents, the state table, web views. Thin by design:
bytes go to stream/runtime.py (and from there to the detector core), messages come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from geoincident import __version__, compiled
from geoincident.stream import security
from geoincident.stream.batching import BATCH_CODEC, acknowledge
from geoincident.stream.batching import install as install_batching
from geoincident.stream.checkpoint import (
    CheckpointError,
    Encoding,
    Packing,
    assembled,
    decode,
    stored,
)
from geoincident.stream.config import Settings
from geoincident.stream.liveness import BrokerLiveness
from geoincident.stream.metrics import WorkerMetrics
from geoincident.stream.runtime import CHECKPOINT_VERSION, Outputs, WorkerCore

log = logging.getLogger("geoincident.worker")

# What processes records of an input partition read directly (Worker._unstall).
Refeed = Callable[[int, list[tuple[int, bytes, int]]], Awaitable[None]]

CHECKPOINT_KEY = b"checkpoint"
CHECKPOINT_INTERVAL_S = 1.0
# A checkpoint takes at most this share of the worker's time: one that took 80 ms (the
# reputation of 200,000 reporters) is followed by the next 1.6 s later, not 1 s. Up to
# CHECKPOINT_MAX_INTERVAL_S apart: the interval bounds only how much a restart reads again.
# (Its encoding is interleaved with processing, see Worker.begin_checkpoint, so this bounds
# the work, not a stop of the event loop.)
CHECKPOINT_SHARE = 0.05
CHECKPOINT_MAX_INTERVAL_S = 30.0


def checkpoint_interval(spent_s: float, partitions: int = 1) -> float:
    """Seconds until the next checkpoint after one that took `spent_s`. `partitions`: how many
    checkpoint on their own in this process (a scaled-out worker's routed partitions), which
    share CHECKPOINT_SHARE between them: together they take no more of its time than one."""
    share = CHECKPOINT_SHARE / max(1, partitions)
    return min(CHECKPOINT_MAX_INTERVAL_S, max(CHECKPOINT_INTERVAL_S, spent_s / share))


# A range read again that gets no record for this many 200 ms polls has stalled; it is retried
# with a new connection, and after READ_RANGE_ATTEMPTS stalls not taken as complete: ShortRead,
# the process stops without committing, and a restart reads it again. (Before, a range was
# returned short after 10 s and the batch after it acknowledged past records never processed.)
READ_RANGE_IDLE_POLLS = 150
READ_RANGE_ATTEMPTS = 3
# An assigned partition behind its topic's end whose next offset has not moved for this long is
# read directly (Worker._unstall).
STALL_S = 10.0


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka options for SASL/TLS, from `[kafka]` (stream/security.py): every Kafka client
    the project creates takes these, or the Faust credentials built from the same settings."""
    return security.client_options(settings.kafka)


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `serve(stop)` on a new event loop; SIGINT or SIGTERM sets `stop` (the console's and
    the notifier's processes: they stop cleanly rather than being cancelled mid-write)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await serve(stop)

    asyncio.run(main())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def logfmt(event: str, **fields: Any) -> str:
    """One structured line: `event=incident_opened incident_id=inc-... category=pothole`."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        if " " in text or "=" in text or not text:
            text = '"' + text.replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class Worker:
    """Builds the Faust app around one WorkerCore."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        params = settings.detector_params()
        topics = settings.topics
        self.core = WorkerCore(
            params,
            topics.reports,
            future_tolerance_s=settings.detection.future_tolerance_s,
            idle_advance=settings.worker.idle_advance,
            actions_topic=topics.actions,
        )
        self.metrics = metrics or WorkerMetrics(categories=params.taxonomy.names)
        # Broker outages: /ready, geoincident_broker_* and the log (stream/liveness.py)
        self.liveness = BrokerLiveness(
            settings.kafka.brokers, kafka_client_options(settings), self.metrics
        )
        self.ready = False
        self._restored = False
        self._restore_lock = asyncio.Lock()
        # One step at a time: a step changes the core's state (offsets included), produces
        # its outputs and waits for their acks; a checkpoint taken in between would record
        # offsets whose outputs were never acknowledged, and a crash would then skip them.
        self._step = asyncio.Lock()
        # Set while this process holds every reports partition (or none): see _on_assigned.
        self._whole = asyncio.Event()
        self._whole.set()
        self.shared_group = False
        self._last_checkpoint = 0.0
        self._checkpoint_every = CHECKPOINT_INTERVAL_S
        self._checkpointed: tuple | None = None
        # the checkpoint being encoded and written (at most one; the next waits for it)
        self._writing: asyncio.Task | None = None
        self._pending_writes: set[asyncio.Task] = set()
        self._stopping = False
        self._stalls: dict[tuple[str, int], tuple[tuple[int | None, int], float]] = {}
        self._peeked: dict[tuple[str, int], float] = {}
        self._peek_ends: dict[tuple[str, int], int] = {}
        self.app = self._build_app()

    # ------------------------------------------------------------------ wiring

    def _build_app(self) -> faust.App:
        settings = self.settings
        kafka = settings.kafka
        worker = settings.worker
        store = "memory://" if worker.store == "memory" else "rocksdb://"
        app = faust.App(
            kafka.group_id,
            broker=[f"kafka://{b.strip()}" for b in kafka.brokers.split(",")],
            broker_client_id=kafka.client_id,
            broker_credentials=self._credentials(),
            store=store,
            datadir=worker.data_dir,
            processing_guarantee="at_least_once",
            topic_partitions=settings.topics.partitions,
            topic_replication_factor=settings.topics.replication_factor,
            consumer_auto_offset_reset="earliest",
            web_enabled=True,
            web_host=worker.web_host,
            web_port=worker.web_port,
            web_in_thread=False,
            producer_max_request_size=8 * 1024 * 1024,
            broker_session_timeout=6.0,
            broker_heartbeat_interval=1.0,
            broker_commit_interval=1.0,
            stream_wait_empty=False,
            key_serializer="raw",
            value_serializer="raw",
            version=1,
        )
        self._wire(app)

        @app.page("/health")
        async def health(web: Any, request: Any) -> Any:
            return web.json({"status": "ok", "version": __version__})

        app.task(self.liveness.run)

        @app.page("/ready")
        async def ready(web: Any, request: Any) -> Any:
            ready = self.ready and self.liveness.up
            return web.json({"ready": ready}, status=200 if ready else 503)

        @app.page("/stats")
        async def stats(web: Any, request: Any) -> Any:
            return web.json(self.stats())

        @app.page("/metrics")
        async def metrics(web: Any, request: Any) -> Any:
            body, content_type = self.metrics.render()
            return web.bytes(body, content_type=content_type.split(";")[0])

        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_before_shutdown.connect(self._on_shutdown)
        return app

    def _output_topics(self, app: faust.App) -> None:
        topics = self.settings.topics
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.actions_topic = app.topic(topics.actions, **raw)
        self.incidents_topic = app.topic(topics.incidents, **raw)
        self.dlq_topic = app.topic(topics.reports_dlq, **raw)
        self.actions_dlq_topic = app.topic(topics.actions_dlq, **raw)

    def stats(self) -> dict:
        return self.core.stats()

    def _wire(self, app: faust.App) -> None:
        """Topics, the state table, the agents and the timer."""
        topics = self.settings.topics
        # Reports arrive as whole fetched batches (stream/batching.py); the rest per record.
        self.reports_topic = app.topic(
            topics.reports, key_serializer="raw", value_serializer=BATCH_CODEC
        )
        install_batching(app, {topics.reports})
        self._output_topics(app)
        # The durable state: one compressed checkpoint, keyed so it always lands in the same
        # changelog partition (use_partitioner), which also lets timers write it.
        self.state = app.tables.add(
            _StateTable(
                app,
                name="state",
                default=None,
                beacon=app.tables.beacon,
                key_type=bytes,
                value_type=bytes,
                partitions=1,
                use_partitioner=True,
            )
        )

        @app.agent(self.reports_topic, concurrency=1)
        async def reports(stream: Any) -> None:
            async for event in stream.events():
                try:
                    await self.on_reports(event.message.partition, event.value)
                except BaseException as error:  # noqa: BLE001 - see _stop_unacked
                    _stop_unacked("reports", event.message, error)

        @app.agent(self.actions_topic, concurrency=1)
        async def actions(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                try:
                    await self.on_action(message.value, message.partition, message.offset)
                except BaseException as error:  # noqa: BLE001 - see _stop_unacked
                    _stop_unacked("actions", message, error)

        @app.timer(interval=1.0)
        async def tick() -> None:
            if not self._restored:
                if not self.app.tables.recovery.completed.is_set():
                    return
            await self.on_tick(checkpoint=self.settings.worker.store == "memory")
            await self._unstall()

    def run(self, loglevel: str = "info") -> None:
        """Create missing topics, then run until SIGINT/SIGTERM (Faust's worker handles them:
        agents stop, offsets are committed, the producer is flushed)."""
        from geoincident.stream.broker import ensure_topics

        asyncio.run(
            ensure_topics(
                self.settings.kafka.brokers,
                self.settings.topic_partitions(),
                replication_factor=self.settings.topics.replication_factor,
                timeout_s=60.0,
                **kafka_client_options(self.settings),
            )
        )
        loop = use_uvloop()
        log.info(logfmt("event_loop", loop=loop, core=compiled.describe()))
        worker = _Worker(self.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        worker.execute_from_commandline()

    def _credentials(self) -> Any:
        return security.faust_credentials(self.settings.kafka)

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        topic = self.settings.topics.reports
        mine = sorted(tp.partition for tp in assigned if tp.topic == topic)
        self.core.assigned(mine, now_ms())
        log.info(logfmt("partitions_assigned", partitions=",".join(map(str, mine)) or "none"))
        total = self.reports_partition_count()
        if mine and len(mine) < total:
            # Another process joined the group (a second worker, or a rolling deploy): reports
            # of one place would be split between two detectors, and each would miss the
            # incidents whose reports landed on the other. Until the group is one process
            # again, this one processes nothing (its input waits, uncommitted) and is not ready.
            self.shared_group = True
            self._whole.clear()
            self.ready = False
            log.error(
                logfmt(
                    "group_shared",
                    group=self.settings.kafka.group_id,
                    partitions=f"{len(mine)} of {total}",
                    detail="another process is in this consumer group; processing waits until "
                    "this one holds every partition of the reports topic (run one worker per "
                    "group, deploying by stopping the old worker before starting the new; or "
                    "set [scale] region_resolution to share detection between processes)",
                )
            )
        elif self.shared_group:
            self.shared_group = False
            self._whole.set()
            self.ready = self._restored
            log.info(logfmt("group_whole", partitions=f"{len(mine)} of {total}"))

    def reports_partition_count(self) -> int:
        """The reports topic's partitions, as the consumer's metadata knows them."""
        count = self.app.consumer.topic_partitions(self.settings.topics.reports)
        return count if count else self.settings.topics.partitions

    # ------------------------------------------------------------------ processing

    async def on_action(self, value: bytes, partition: int, offset: int) -> None:
        await self.ensure_restored()
        async with self._step:
            records = [(offset, value, 0)]
            topic = self.settings.topics.actions
            expected = self.core.action_offsets.get(partition)
            if expected is None:  # none applied yet: the group's commit is where to start
                expected = (await self.committed_offsets(topic, [partition])).get(partition, 0)
            # Offsets the group skipped (Faust can drop a batch it delivered right after a
            # seek, a restart, and move on) are read and applied first, in order: skipped,
            # they would never take effect, the later offset having moved the next one past
            # them (seen in the test suite). One below the next offset was applied already.
            records = await self._starting_at(topic, partition, expected, records)
            for at, action, _ in records:
                await self.produce(self.core.on_action(action, partition, at, now_ms()))
            written = self.begin_checkpoint(force=True)
        # an action is checkpointed before its offset can be committed (applied once); the
        # reports go on meanwhile
        if written is not None:
            await written

    async def on_tick(self, checkpoint: bool) -> None:
        """The 1-second timer: idle advance, metrics, and (memory store) a checkpoint. The
        RocksDB store files a write under the current event's partition, and a timer has no
        event: there, checkpoints come from the agents only."""
        await self.ensure_restored()
        async with self._step:
            current = now_ms()
            if self.shared_group:
                # paused with the reports (see _on_assigned): no idle advance either, or two
                # processes would each resolve incidents on their own
                self._publish_state(current)
                return
            await self.produce(self.core.tick(current))
            self._publish_state(current)
            if checkpoint:
                self.begin_checkpoint()

    async def on_reports(self, partition: int, records: list[tuple[int, bytes, int]]) -> None:
        await self.ensure_restored()
        await self._whole.wait()
        async with self._step:
            await self._on_reports(partition, records)

    async def _on_reports(self, partition: int, records: list[tuple[int, bytes, int]]) -> None:
        current = now_ms()
        clock = self.core.partitions.get(partition)
        if clock is None or not clock.started:
            # Nothing processed from this partition yet: the group's committed offset is where
            # it should start. Faust can drop a batch it delivered right after its start-up
            # seek and move past it; such a hole is read here, as for a started partition.
            topic = self.settings.topics.reports
            expected = (await self.committed_offsets(topic, [partition])).get(partition, 0)
            if records[0][0] > expected:
                records = await self._fill_gap(topic, partition, expected, records)
        else:
            # Below the next offset: inside the restored checkpoint, processed and produced
            # before the stop. Above it: offsets the group skipped (seen with Faust right after
            # a restart), read here; at-least-once, so producing again is safe.
            records = await self._starting_at(
                self.settings.topics.reports, partition, clock.next_offset, records
            )
            if not records:
                return
        out = self.core.on_reports(partition, records, current)
        await self.produce(out)
        self.begin_checkpoint()

    def _stall_watch(self) -> dict[str, tuple[Callable[[int], int | None], Refeed]]:
        """The input topics _unstall watches: for each, the next offset to process of a
        partition (None: nothing processed yet, the group's commit says) and what processes
        records read directly."""
        topics = self.settings.topics
        watch: dict[str, tuple[Callable[[int], int | None], Refeed]] = {
            topics.actions: (self.core.action_offsets.get, self._apply_actions)
        }
        if not self.shared_group:  # paused (see _on_assigned): the reports wait
            watch[topics.reports] = (self._next_report, self.on_reports)
        return watch

    def _next_report(self, partition: int) -> int | None:
        clock = self.core.partitions.get(partition)
        return clock.next_offset if clock is not None and clock.started else None

    async def _apply_actions(self, partition: int, records: list[tuple[int, bytes, int]]) -> None:
        for offset, value, _ in records:
            await self.on_action(value, partition, offset)

    async def _unstall(self) -> None:
        """Faust can drop a batch it delivered right after a start-up seek or a rebalance and
        move on. Gap filling reads the hole when a later record comes; when none comes (the
        end of a burst of actions, the last reports of a stream) nothing would. So an assigned
        partition that stays behind its topic's end with its next offset unchanged for STALL_S
        is read here from that offset and processed as if delivered; what the consumer may
        still deliver of it is skipped by offset, as after a restart."""
        consumer = self.app.consumer
        try:
            assignment = sorted(consumer.assignment())
        except Exception:  # noqa: BLE001 - no consumer yet (starting, a rebalance): next tick
            return
        now = time.monotonic()
        watch = self._stall_watch()
        assigned = set(assignment)
        owned = [tp for tp in self._sole_owned() if tp not in assigned]
        for tp in [*assignment, *owned]:
            watched = watch.get(tp.topic)
            if watched is None:
                continue
            next_offset, refeed = watched
            key = (tp.topic, tp.partition)
            expected = next_offset(tp.partition)
            if tp in assigned:
                # Behind what? The end the consumer last heard of, or where it has got to:
                # records it fetched and handed over that were never processed (a dropped
                # batch) put its position past the next offset to process.
                highwater = consumer.highwater(TP(tp.topic, tp.partition))
                end = max(highwater or 0, await self._position(consumer, tp))
            else:
                # Not in the consumer's assignment although this process alone owns it (a
                # safeguard: nothing waits on an actions partition the consumer lets go of):
                # what is there, by a look at the partition.
                end = await self._peek_end(tp.topic, tp.partition, expected, now)
            if (expected if expected is not None else 0) >= end:
                self._stalls.pop(key, None)
                continue
            mark = (expected, end)
            seen = self._stalls.get(key)
            if seen is None or seen[0] != mark:
                self._stalls[key] = (mark, now)
                continue
            if now - seen[1] < STALL_S:
                continue
            self._stalls[key] = (mark, float("inf"))  # looked at: again once something moves
            start = expected
            if start is None:
                start = (await self.committed_offsets(tp.topic, [tp.partition])).get(
                    tp.partition, 0
                )
            if start >= end:
                continue
            try:
                records = await self.read_range(tp.topic, tp.partition, start, end)
            except ShortRead as error:  # nothing was acknowledged: looked at again later
                self._stalls[key] = (mark, now)
                log.warning(logfmt("stall_read_failed", topic=tp.topic, error=str(error)))
                continue
            log.warning(
                logfmt(
                    "stall_read",
                    topic=tp.topic,
                    partition=tp.partition,
                    start=start,
                    end=end,
                    records=len(records),
                    detail=f"the consumer delivered nothing for {STALL_S:.0f} s while behind",
                )
            )
            if records:
                await refeed(tp.partition, records)
                if tp in assigned:  # else the checkpoint's offsets are the record
                    await acknowledge(consumer, TP(tp.topic, tp.partition), start, end)

    def _sole_owned(self) -> list[Any]:
        """Input partitions this process must process whatever the consumer was assigned:
        every actions partition, while it is the group's only process."""
        if self.shared_group:
            return []
        topic = self.settings.topics.actions
        try:
            count = self.app.consumer.topic_partitions(topic)
        except Exception:  # noqa: BLE001 - no metadata yet: next tick
            return []
        return [TP(topic, p) for p in range(count or 0)]

    async def _peek_end(self, topic: str, partition: int, start: int | None, now: float) -> int:
        """Past the last record of a partition from `start` on (0 when none), by a look with
        a plain consumer; at most once per STALL_S a partition."""
        key = (topic, partition)
        if now - self._peeked.get(key, -STALL_S) < STALL_S:
            return self._peek_ends.get(key, 0)
        self._peeked[key] = now
        if start is None:
            start = (await self.committed_offsets(topic, [partition])).get(partition, 0)
        end = 0
        try:
            async with self._reader(topic, partition, start) as (consumer, tp):
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=100_000)
                messages = batch.get(tp, [])
                if messages:
                    end = messages[-1].offset + 1
        except Exception as error:  # noqa: BLE001 - a look that fails: the next one, later
            log.warning(logfmt("stall_peek_failed", topic=topic, error=str(error)))
        self._peek_ends[key] = end
        return end

    @staticmethod
    async def _position(consumer: Any, tp: Any) -> int:
        """The group consumer's position in a partition (0 when it cannot say at once)."""
        try:
            position = await asyncio.wait_for(consumer.position(TP(tp.topic, tp.partition)), 2.0)
        except Exception:  # noqa: BLE001 - not assigned any more, no position yet: no figure
            return 0
        return position if isinstance(position, int) else 0

    async def _starting_at(
        self, topic: str, partition: int, position: int, records: list[tuple[int, bytes, int]]
    ) -> list[tuple[int, bytes, int]]:
        """The batch from `position` on: without the records before it (processed already),
        preceded by those between it and the batch (skipped by the group) read from the topic."""
        if records[0][0] < position:
            return [r for r in records if r[0] >= position]
        if records[0][0] > position:
            return await self._fill_gap(topic, partition, position, records)
        return records

    async def _fill_gap(
        self, topic: str, partition: int, start: int, records: list[tuple[int, bytes, int]]
    ) -> list[tuple[int, bytes, int]]:
        """The batch, preceded by the records [start, its first offset) read from the topic."""
        missing = await self.read_range(topic, partition, start, records[0][0])
        log.warning(
            logfmt(
                "gap_filled",
                topic=topic,
                partition=partition,
                start=start,
                end=records[0][0],
                records=len(missing),
            )
        )
        return missing + records

    async def produce(self, out: Outputs) -> None:
        """Send what a step produced; wait for the broker's acks before anything commits."""
        futures = []
        for event in out.incidents:
            futures.append(
                await self.incidents_topic.send(
                    key=event.incident_id.encode(), value=event.to_json()
                )
            )
            log.info(
                logfmt(
                    f"incident_{event.event}",
                    incident_id=event.incident_id,
                    version=event.version,
                    kind=event.kind,
                    category=event.category,
                    lat=event.lat,
                    lon=event.lon,
                    reporters=event.independent_reporters,
                )
            )
        for record in out.dlq:
            futures.append(await self.dlq_topic.send(value=record))
        for record in out.action_dlq:
            futures.append(await self.actions_dlq_topic.send(value=record))
        if futures:
            await asyncio.gather(*futures)
        self._count(out)

    def _count(self, out: Outputs) -> None:
        metrics = self.metrics
        reports = {k: v for k, v in out.outcomes.items() if not k.startswith("action:")}
        if reports:
            metrics.count_outcomes(reports)
        if out.rejections:
            metrics.count_rejections(out.rejections)
        for key, n in out.outcomes.items():
            if key.startswith("action:"):
                _, action, outcome = key.split(":")
                metrics.count_action(action, outcome, n)
        for event in out.incidents:
            metrics.count_incident(event.event, event.kind, event.category)
        if out.dlq:
            metrics.count_dlq(self.settings.topics.reports_dlq, len(out.dlq))
        if out.action_dlq:
            metrics.count_dlq(self.settings.topics.actions_dlq, len(out.action_dlq))
        if out.latencies_s:
            metrics.observe_latencies(out.latencies_s)
        for burst in self._bursts():  # a signal for an operator (operations.md)
            metrics.count_burst(burst.category)
            log.warning(logfmt("new_reporter_burst", **burst.log_fields()))

    def _bursts(self) -> list:
        return self.core.take_bursts()

    def _publish_state(self, current: int) -> None:
        detector = self.core.detector
        open_by_category: dict[str, int] = {}
        for incident in detector.open_incidents():
            open_by_category[incident.category] = open_by_category.get(incident.category, 0) + 1
        self.metrics.set_state(
            active_cells=detector.active_cells,
            state_reports=detector.state_reports,
            open_incidents=open_by_category,
            event_time_lag_s=self.core.event_time_lag_s(current),
            chance_groups=detector.chance_groups,
            reputation=detector.reputation.summary(),
        )
        topic = self.settings.topics.reports
        lags: dict[tuple[str, int], int] = {}
        try:
            assigned = [tp for tp in self.app.consumer.assignment() if tp.topic == topic]
        except Exception:  # noqa: BLE001 - no consumer yet: no figure, not a failure
            assigned = []
        for tp in assigned:
            clock = self.core.partitions.get(tp.partition)
            highwater = self.app.consumer.highwater(TP(topic, tp.partition))
            if highwater is not None:
                done = clock.next_offset if clock is not None else 0
                lags[(topic, tp.partition)] = max(0, highwater - done)
        self.metrics.set_consumer_lag(lags)

    # ------------------------------------------------------------------ checkpoints

    def begin_checkpoint(self, force: bool = False) -> asyncio.Task | None:
        """Take a checkpoint of the state as it is now (called inside a step), if one is due
        (always when forced) and something happened since the last. The state is captured
        here; its encoding, most of it the reputation, goes on in steps between batches and
        its compression in a thread, so a large state does not stop the event loop (at
        20,000 reports/s of a national stream a whole encode took up to 1.5 s). Returns the
        task that writes it, which runs after the one before it."""
        if self._stopping:
            return None
        if not force and (
            time.monotonic() - self._last_checkpoint < self._checkpoint_every
            or (self._writing is not None and not self._writing.done())
        ):
            return None
        marker = (
            self.core.detector.counts.copy(),
            sum(self.core.totals.values()),
            self.core.detector.clock_ms,
            len(self.core.detector.incidents),
        )
        if marker == self._checkpointed and not force:
            return None  # nothing happened since the last one
        self._checkpointed = marker
        started = time.perf_counter()
        encoding = Encoding(self.core.checkpoint())
        self._last_checkpoint = time.monotonic()
        self._writing = task = asyncio.ensure_future(
            self._write_checkpoint(
                encoding,
                self.core.checkpoint_seq,
                time.perf_counter() - started,
                self._writing,
                faust.current_event(),
            )
        )
        self._pending_writes.add(task)
        task.add_done_callback(self._pending_writes.discard)
        task.add_done_callback(_checkpoint_written)
        return task

    async def checkpoint_written(self) -> None:
        """Wait until the checkpoint being written (if any) is."""
        if self._writing is not None:
            await asyncio.shield(self._writing)

    async def _on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        """On a graceful stop, once the consumer has stopped fetching and the tables have
        stopped, before the producer's last flush: no checkpoint begins any more, and one
        still being encoded is dropped, not written into stopped tables. The next start
        takes in what was committed after the last one written, as after a crash. (An
        action waiting for its checkpoint then ends the process without committing it; it is
        applied at the next start.)"""
        self._stopping = True
        for task in list(self._pending_writes):
            task.cancel()

    async def _write_checkpoint(
        self,
        encoding: Encoding,
        seq: int,
        spent_s: float,
        previous: asyncio.Task | None,
        event: Any,
    ) -> None:
        """Encode the rest of a checkpoint a slice at a time, compressing each slice in a
        thread as it is made (the body is never held whole: some 46 bytes a reporter, held
        twice before, as slices and as their join), and write it (after the
        checkpoint before it). `event` is the event being processed when it was taken: the
        RocksDB store files the write under its partition, and finds it through a weak
        reference that this one keeps alive until then."""
        if previous is not None and not previous.done():
            await asyncio.shield(previous)
        longest_s = spent_s  # the longest the event loop waited for it
        packing = Packing()
        while True:
            started = time.perf_counter()
            done = encoding.step()
            took = time.perf_counter() - started
            spent_s += took
            longest_s = max(longest_s, took)
            started = time.perf_counter()
            await asyncio.to_thread(packing.add, encoding.take())
            spent_s += time.perf_counter() - started
            if done:
                break
        blob = packing.blob()
        started = time.perf_counter()
        for key, value in stored(CHECKPOINT_KEY, blob, seq):
            self.state[key] = value
        took = time.perf_counter() - started
        spent_s += took
        self._checkpoint_every = checkpoint_interval(spent_s)
        log.info(
            logfmt(
                "checkpoint",
                seq=seq,
                bytes=len(blob),
                ms=round(spent_s * 1000),
                loop_ms=round(max(longest_s, took) * 1000),
            )
        )

    async def ensure_restored(self) -> None:
        if self._restored:
            return
        async with self._restore_lock:
            if self._restored:
                return
            blob = self.state.get(CHECKPOINT_KEY)
            if blob:
                checkpoint = self._decoded(blob)  # (it reads chunks if it was stored in them)
                self.core.restore(checkpoint, now_ms())
                read = 0
                topics = self.settings.topics
                for partition, saved in checkpoint["partitions"].items():
                    values = await self.read_range(
                        topics.reports,
                        int(partition),
                        saved["rebuild_offset"],
                        saved["next_offset"],
                    )
                    read += self.core.rebuild(v for _, v, _ in values)
                committed = await self.committed_offsets(topics.reports, checkpoint["partitions"])
                for partition, offset in committed.items():
                    await self._catch_up(partition, offset, now_ms())
                await self._catch_up_actions()
                log.info(
                    logfmt(
                        "checkpoint_restored",
                        seq=checkpoint["seq"],
                        incidents=len(self.core.detector.incidents),
                        rebuilt_reports=read,
                    )
                )
            else:
                log.info(logfmt("fresh_start"))
            self._restored = True
            self.ready = not self.shared_group

    def _decoded(self, blob: bytes, key: bytes = CHECKPOINT_KEY) -> dict:
        """The stored checkpoint, or the process ends naming the changelog record that is not
        one: its bytes are never run (no pickle) and never half-used."""
        try:
            checkpoint = decode(assembled(key, blob, self.state.get))
            if checkpoint.get("version") != CHECKPOINT_VERSION:
                raise CheckpointError(
                    f"state version {checkpoint.get('version')} is not supported (this build "
                    f"reads {CHECKPOINT_VERSION})"
                )
            return checkpoint
        except CheckpointError as error:
            topic, partition, offset = self.state.position_of(key)
            log.critical(
                logfmt(
                    "checkpoint_refused",
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    error=str(error),
                    detail="the changelog record is not a checkpoint this build can read; "
                    "nothing was processed. Delete the record (or the topic) to start from the "
                    "input's committed offsets, or run the build that wrote it",
                )
            )
            logging.shutdown()
            os._exit(EXIT_BAD_CHECKPOINT)

    async def committed_offsets(self, topic: str, partitions: Any | None = None) -> dict[int, int]:
        """The group's committed offsets of a topic's partitions (all of them when None), by
        OffsetFetch: no join."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.brokers,
            group_id=self.settings.kafka.group_id,
            enable_auto_commit=False,
            **kafka_client_options(self.settings),
        )
        await consumer.start()
        try:
            if partitions is None:
                partitions = consumer.partitions_for_topic(topic) or ()
            found = {}
            for partition in partitions:
                offset = await consumer.committed(TopicPartition(topic, int(partition)))
                if offset is not None:
                    found[int(partition)] = offset
            return found
        finally:
            await consumer.stop()

    async def _catch_up(self, partition: int, first_offset: int, current: int) -> None:
        """Records between the checkpoint and where the group resumes were processed and
        produced before the stop: take them into state and counts without producing again."""
        clock = self.core.partitions.get(partition)
        if clock is None or first_offset <= clock.next_offset:
            return
        topic = self.settings.topics.reports
        records = await self.read_range(topic, partition, clock.next_offset, first_offset)
        out = self.core.on_reports(partition, records, current, silent=True)
        self._count(out)
        log.info(logfmt("caught_up", topic=topic, partition=partition, records=len(records)))

    async def _catch_up_actions(self) -> None:
        """The same for actions: one the group committed but the checkpoint does not hold was
        applied and its outputs produced before the stop. Applied again silently here, and
        skipped when the group redelivers what the checkpoint holds, each action takes effect
        exactly once across a crash."""
        topic = self.settings.topics.actions
        for partition, committed in (await self.committed_offsets(topic)).items():
            start = self.core.action_offsets.get(partition, 0)
            if committed <= start:
                continue
            records = await self.read_range(topic, partition, start, committed)
            for offset, value, _ in records:
                self._count(self.core.on_action(value, partition, offset, now_ms(), silent=True))
            log.info(logfmt("caught_up", topic=topic, partition=partition, records=len(records)))

    async def read_range(
        self, topic: str, partition: int, start: int, end: int
    ) -> list[tuple[int, bytes, int]]:
        """Records [start, end) of one partition, read with a plain consumer (no group).
        Counted, not bounded by end offsets: some brokers report those loosely. A read that
        stalls is retried with a new connection from where it got to; after
        READ_RANGE_ATTEMPTS stalls it fails (ShortRead) rather than return a short range."""
        records: list[tuple[int, bytes, int]] = []
        position = start
        for attempt in range(1, READ_RANGE_ATTEMPTS + 1):
            if await self._read_into(records, topic, partition, position, end):
                return records
            position = records[-1][0] + 1 if records else start
            log.warning(
                logfmt(
                    "read_range_stalled",
                    topic=topic,
                    partition=partition,
                    start=start,
                    end=end,
                    got_up_to=position,
                    attempt=f"{attempt} of {READ_RANGE_ATTEMPTS}",
                )
            )
        raise ShortRead(
            f"partition {partition} of {topic}: offsets [{start}, {end}) were to be read "
            f"again, got up to {position} and then nothing for {READ_RANGE_IDLE_POLLS * 0.2:.0f} "
            f"s, {READ_RANGE_ATTEMPTS} attempts. Stopping without committing; a restart reads "
            "the range again"
        )

    async def _read_into(
        self,
        records: list[tuple[int, bytes, int]],
        topic: str,
        partition: int,
        start: int,
        end: int,
    ) -> bool:
        """Append records [start, end) to `records`; False when the read stalls first."""
        if end <= start:
            return True
        async with self._reader(topic, partition, start) as (consumer, tp):
            idle_polls = 0
            while True:
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
                messages = batch.get(tp, [])
                for message in messages:
                    if message.offset >= end:
                        return True
                    records.append((message.offset, message.value, message.timestamp))
                # Offsets may be missing within a range (transaction markers, compaction): the
                # range is complete once the position has passed it, not at its last offset.
                if await consumer.position(tp) >= end:
                    return True
                if messages:
                    idle_polls = 0
                    continue
                idle_polls += 1
                # Not the partition's end offset: some brokers (Tansu) answer ListOffsets with
                # the last batch's base + 1, which would fail a range that is all there.
                if idle_polls >= READ_RANGE_IDLE_POLLS:
                    return False

    @contextlib.asynccontextmanager
    async def _reader(
        self, topic: str, partition: int, start: int
    ) -> AsyncIterator[tuple[AIOKafkaConsumer, TopicPartition]]:
        """A plain consumer (no group) of one partition, at `start`; stopped on the way out."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.brokers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_client_options(self.settings),
        )
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, start)
            yield consumer, tp
        finally:
            await consumer.stop()


EXIT_BAD_CHECKPOINT = 3


class _StateTable(faust.Table):
    """The checkpoint table; it remembers where in the changelog each key's value was read
    from, so a value that is not a checkpoint is refused naming its partition and offset."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._positions: dict[Any, tuple[str, int, int]] = {}

    def apply_changelog_batch(self, batch: Any) -> None:
        batch = list(batch)
        for event in batch:
            message = event.message
            self._positions[message.key] = (message.topic, message.partition, message.offset)
        super().apply_changelog_batch(batch)

    def position_of(self, key: Any) -> tuple[str, int | str, int | str]:
        found = self._positions.get(key)
        if found is None:  # recovered from the local store, not read from the changelog
            return self.changelog_topic.get_topic_name(), "unknown", "unknown"
        return found


class ShortRead(RuntimeError):
    """A range of the input that must be read again (rebuild, catch-up, a gap) did not arrive
    in full: going on would acknowledge offsets that were never processed."""


def _checkpoint_written(task: asyncio.Task) -> None:
    """A checkpoint that could not be written stops the process, as a failed step does: the
    state it holds would otherwise be lost silently. A restart resumes from the last one."""
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    log.critical(
        logfmt("checkpoint_failed", error=f"{type(error).__name__}: {error}"), exc_info=error
    )
    logging.shutdown()
    os._exit(70)


def _stop_unacked(agent: str, message: Any, error: BaseException) -> None:
    """An event whose processing did not finish must not be acknowledged: Faust acks the
    current event on the way out of an agent, whatever ended it, and for a batch event that
    commits the whole batch. So the process ends here, before that, and a restart processes
    the batch again from the last commit (at least once). This also covers a stop signal that
    lands mid-batch (the agent is cancelled)."""
    if isinstance(error, asyncio.CancelledError):
        log.warning(
            logfmt(
                "stopped_mid_event",
                agent=agent,
                partition=message.partition,
                offset=message.offset,
                detail="exiting without committing it; a restart processes it again",
            )
        )
    else:
        log.critical(
            logfmt(
                "processing_failed",
                agent=agent,
                partition=message.partition,
                offset=message.offset,
                error=f"{type(error).__name__}: {error}",
            ),
            exc_info=error,
        )
    logging.shutdown()
    os._exit(70)


def use_uvloop() -> str:
    """uvloop for the worker's loops (the main one and Faust's consumer thread's), when it is
    installed: a faster loop under the same asyncio API. Returns the loop's name."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    import mode.loop

    mode.loop.use("uvloop")
    guard_kafka_writes()
    return "uvloop"


def guard_kafka_writes() -> None:
    """Make a request written to a connection whose transport uvloop has closed fail as a
    connection error, as it does under asyncio.

    aiokafka (pinned in pyproject.toml) turns an OSError from writing a request into a
    KafkaConnectionError, which every caller of it retries. uvloop raises RuntimeError instead
    ("the handler is closed") when the broker reset the connection and the transport closed
    before aiokafka's reader noticed (aio-libs/aiokafka#1038). That error escapes the retries
    and ends whichever background task of the client wrote the request: the group consumer's
    fetcher (nothing is consumed any more) or its metadata synchronizer (a group coordinator
    lost in a broker outage is then never looked up again, so no offset is committed after
    it). A broker outage makes the race likely: every connection is reset at once while the
    clients keep writing. Here the connection is closed and the error is the one aiokafka
    raises for a broken connection."""
    from aiokafka import conn as kafka_conn
    from aiokafka.errors import KafkaConnectionError

    connection = kafka_conn.AIOKafkaConnection
    if getattr(connection, "_geoincident_guarded", False):
        return

    def guarded(write: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(write)
        def guarded_write(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return write(self, *args, **kwargs)
            except RuntimeError as error:
                writer = self._writer
                if writer is None or not writer.transport.is_closing():
                    raise
                self.close(reason=kafka_conn.CloseReason.CONNECTION_BROKEN)
                raise KafkaConnectionError(
                    f"Connection at {self._host}:{self._port} broken: {error}"
                ) from error

        return guarded_write

    # the two methods that write to the transport (requests, and SASL tokens when connecting)
    connection.send = guarded(connection.send)  # type: ignore[method-assign]
    connection._send_sasl_token = guarded(connection._send_sasl_token)  # type: ignore[method-assign]
    connection._geoincident_guarded = True  # type: ignore[attr-defined]


SHUTDOWN_GRACE_S = 15.0


class _Worker(faust.Worker):
    """Faust's worker, with a deadline on the graceful stop.

    With the broker gone, the final commit and producer flush can wait forever; a service
    manager would then have to kill -9 it. After SHUTDOWN_GRACE_S the process exits (code 1)
    on its own, with a log line; at-least-once processing makes that safe.
    """

    def _arm_deadline(self) -> None:
        def expire() -> None:
            log.error(logfmt("shutdown_deadline", seconds=SHUTDOWN_GRACE_S))
            os._exit(1)

        timer = threading.Timer(SHUTDOWN_GRACE_S, expire)
        timer.daemon = True
        timer.start()

    def _on_sigterm(self) -> None:
        self._arm_deadline()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_deadline()
        super()._on_sigint()
