"""The worker with `[scale]` set: route, then detect per routed partition (stream/routing.py).

Every process runs both stages in one consumer group, so Kafka's group protocol spreads the
`reports` partitions (routing) and the routed partitions (detection, with their changelog
partition of checkpoints) over the processes; a process that joins or leaves moves partitions,
not data. A routed partition's detector is restored on the process it moves to from its own
checkpoint, its windows read again from the routed topic, as an unsharded worker does.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import faust
from faust.types import TP

from geoincident.stream.app import (
    CHECKPOINT_INTERVAL_S,
    EXIT_BAD_CHECKPOINT,
    Refeed,
    Worker,
    _StateTable,
    _stop_unacked,
    checkpoint_interval,
    kafka_client_options,
    log,
    logfmt,
    now_ms,
)
from geoincident.stream.batching import BATCH_CODEC
from geoincident.stream.batching import install as install_batching
from geoincident.stream.checkpoint import encode, stored
from geoincident.stream.config import Settings
from geoincident.stream.liveness import BrokerLiveness
from geoincident.stream.metrics import WorkerMetrics
from geoincident.stream.routing import RegionCore, Router

__all__ = ["EXIT_BAD_CHECKPOINT", "ShardedWorker"]


def checkpoint_key(partition: int) -> bytes:
    return b"routed/%d" % partition


class ShardedWorker(Worker):
    """Routes the reports of the partitions it is given and detects on the routed partitions
    it is given; either set may be empty."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.params = params = settings.detector_params()
        regions = settings.region_map(params)
        assert regions is not None, "ShardedWorker needs [scale] region_resolution"
        self.regions = regions
        topics = settings.topics
        self.router = Router(
            params,
            regions,
            topics.reports,
            topics.actions,
            future_tolerance_s=settings.detection.future_tolerance_s,
        )
        self.cores: dict[int, RegionCore] = {}
        self.metrics = metrics or WorkerMetrics(categories=params.taxonomy.names)
        # Broker outages: /ready, geoincident_broker_* and the log (stream/liveness.py)
        self.liveness = BrokerLiveness(
            settings.kafka.brokers, kafka_client_options(settings), self.metrics
        )
        self.ready = False
        self.shared_group = False
        self._assigned: set[int] = set()
        self._sources: list[int] = []  # the reports partitions this process routes
        self._source_next: dict[int, int] = {}  # ... and the next offset to route of each
        self._source_action_next: dict[int, int] = {}  # the same for the actions partitions
        self._routing = asyncio.Lock()  # the consumer's batches and _unstall's, one at a time
        self._stalls: dict[tuple[str, int], tuple[tuple[int | None, int], float]] = {}
        self._committed_sources: dict[int, int] = {}  # the group's commit, when it was read
        self._restore_locks: dict[int, asyncio.Lock] = {}
        self._step = asyncio.Lock()
        self._last_checkpoint: dict[int, float] = {}
        self._checkpoint_every: dict[int, float] = {}
        self._checkpointed: dict[int, tuple] = {}
        # Checkpoints of routed partitions are encoded whole inside their step: one written
        # later could land after the partition's next owner restored (a rebalance) and mix
        # with its chunks. So none is ever in flight here.
        self._writing: asyncio.Task | None = None
        self._pending_writes: set[asyncio.Task] = set()
        # reports the router sent to the DLQ since this process started (not checkpointed: the
        # DLQ topic is their record)
        self.routed_rejections: Counter[str] = Counter()
        self.halo_copies = 0
        self.app = self._build_app()

    # ------------------------------------------------------------------ wiring

    def _wire(self, app: faust.App) -> None:
        topics = self.settings.topics
        partitions = self.regions.partitions
        self.reports_topic = app.topic(
            topics.reports, key_serializer="raw", value_serializer=BATCH_CODEC
        )
        self.routed_topic = app.topic(
            topics.routed,
            key_serializer="raw",
            value_serializer=BATCH_CODEC,
            partitions=partitions,
        )
        install_batching(app, {topics.reports, topics.routed})
        self._output_topics(app)
        # One checkpoint per routed partition, written to the changelog partition of the same
        # number: Faust assigns both to the same process (same partition count).
        self.state = app.tables.add(
            _StateTable(
                app,
                name="routed-state",
                default=None,
                beacon=app.tables.beacon,
                key_type=bytes,
                value_type=bytes,
                partitions=partitions,
            )
        )

        @app.agent(self.reports_topic, concurrency=1)
        async def route(stream: Any) -> None:
            async for event in stream.events():
                try:
                    await self.on_source(event.message.partition, event.value)
                except BaseException as error:  # noqa: BLE001 - see _stop_unacked
                    _stop_unacked("route", event.message, error)

        @app.agent(self.actions_topic, concurrency=1)
        async def route_actions(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                try:
                    await self.on_source_action(message.value, message.partition, message.offset)
                except BaseException as error:  # noqa: BLE001 - see _stop_unacked
                    _stop_unacked("route_actions", message, error)

        @app.agent(self.routed_topic, concurrency=1)
        async def detect(stream: Any) -> None:
            async for event in stream.events():
                try:
                    await self.on_routed(event.message.partition, event.value)
                except BaseException as error:  # noqa: BLE001 - see _stop_unacked
                    _stop_unacked("detect", event.message, error)

        @app.timer(interval=1.0)
        async def tick() -> None:
            if not self.app.tables.recovery.completed.is_set():
                return
            await self.on_tick(checkpoint=self.settings.worker.store == "memory")
            await self._unstall()

    def _stall_watch(self) -> dict[str, tuple[Callable[[int], int | None], Refeed]]:
        topics = self.settings.topics
        return {
            topics.reports: (self._source_next.get, self.on_source),
            topics.actions: (self._source_action_next.get, self._route_actions),
            topics.routed: (self._routed_position, self.on_routed),
        }

    def _sole_owned(self) -> list[Any]:
        return []  # every input partition is shared by the group's processes

    def _routed_position(self, partition: int) -> int | None:
        core = self.cores.get(partition)
        return core.position if core is not None else None

    async def _route_actions(self, partition: int, records: list[tuple[int, bytes, int]]) -> None:
        for offset, value, _ in records:
            await self.on_source_action(value, partition, offset)

    # ------------------------------------------------------------------ stage 1: route

    async def on_source(self, partition: int, records: list[tuple[int, bytes, int]]) -> None:
        """A batch of `reports`: each report to its region's partition (and the halo's); the
        batch is acknowledged (committed) once the broker has every copy."""
        async with self._routing:
            await self._route(partition, records)

    async def _route(self, partition: int, records: list[tuple[int, bytes, int]]) -> None:
        records = await self._contiguous(partition, records)
        if not records:
            return
        routed = self.router.route_reports(partition, records, now_ms())
        futures = await self._send_routed(routed.records)
        self.router.routed(partition, routed, now_ms())
        for record in routed.dlq:
            futures.append(await self.dlq_topic.send(value=record))
        if futures:
            await asyncio.gather(*futures)
        if routed.dlq:
            self.routed_rejections.update(routed.rejections)
            self.metrics.count_outcomes({"rejected": len(routed.dlq)})
            self.metrics.count_rejections(routed.rejections)
            self.metrics.count_dlq(self.settings.topics.reports_dlq, len(routed.dlq))
        self.halo_copies += routed.halo_copies

    async def _send_routed(self, records: list[tuple[int, bytes, int, int]]) -> list[Any]:
        """Send the routed copies of a batch in batches of records: one open batch a routed
        partition, sent when full and at the end, in the order routed. A record costs the
        producer some 3 us this way, where a `send` each (Faust's, then aiokafka's) cost
        over 11 us, and routing sends every report and its halo copies. aiokafka's
        `create_batch` and `send_batch`, on the producer Faust started (`_ensure_producer`,
        pinned in tests/stream/test_batching.py), so its settings (TLS, SASL, acks,
        compression) are the ones every other record goes out with. Each record keeps its
        source record's timestamp, to the millisecond. Returns the batches' futures."""
        if not records:
            return []
        producer = self.app.producer._ensure_producer()
        topic = self.settings.topics.routed
        open_batches: dict[int, Any] = {}
        futures = []
        for target, value, timestamp_ms, _ in records:
            batch = open_batches.get(target)
            if batch is None:
                batch = open_batches[target] = producer.create_batch()
            if batch.append(key=None, value=value, timestamp=timestamp_ms) is None:
                # full: it goes, and a fresh batch takes the record (a first record always fits)
                futures.append(await producer.send_batch(batch, topic, partition=target))
                batch = open_batches[target] = producer.create_batch()
                batch.append(key=None, value=value, timestamp=timestamp_ms)
        for target, batch in open_batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=target))
        return futures

    async def _contiguous(
        self, partition: int, records: list[tuple[int, bytes, int]]
    ) -> list[tuple[int, bytes, int]]:
        """The batch, without what this process routed already and preceded by any offsets
        the group skipped (Faust can drop the batch it delivered right after its start-up
        seek and move past it): every report is routed before its offset is committed."""
        topic = self.settings.topics.reports
        expected = self._source_next.get(partition)
        if expected is None:
            expected = (await self.committed_offsets(topic, [partition])).get(partition, 0)
        records = await self._starting_at(topic, partition, expected, records)
        if records:
            self._source_next[partition] = records[-1][0] + 1
        return records

    async def on_source_action(self, value: bytes, partition: int, offset: int) -> None:
        async with self._routing:
            if offset < self._source_action_next.get(partition, 0):
                return  # routed already (read by _unstall)
            await self._route_action(value, partition, offset)
            self._source_action_next[partition] = offset + 1

    async def _route_action(self, value: bytes, partition: int, offset: int) -> None:
        copies, out = self.router.route_action(value, partition, offset, now_ms())
        send = self.app.producer.send
        topic = self.settings.topics.routed
        futures = [await send(topic, None, routed, target, None, None) for target, routed in copies]
        if futures:
            await asyncio.gather(*futures)
        await self.produce(out)

    async def send_marks(self) -> None:
        """Every second: where each source partition this process routes stands (see
        routing.MARK); they move event time on when reports stop coming."""
        if not self._sources or not self._settled():
            return
        send = self.app.producer.send
        topic = self.settings.topics.routed
        known = [s for s in self._sources if await self._knows_where(s)]
        # queued behind the reports routed before them, not waited for: a mark that is late
        # or lost (a broker outage) only delays the idle advance it carries
        for target, value in self.router.marks(known, now_ms()):
            future = await send(topic, None, value, target, None, None)
            future.add_done_callback(_ignore_outcome)

    async def _knows_where(self, source: int) -> bool:
        """Whether this process can say where a source partition stands: it routed from it,
        or there is nothing to route (its committed offset is at its end). Not while records
        wait to be routed: a mark then would have its channel counted as empty and its
        reports found late once they come."""
        if source in self.router.sources:
            return True
        reports = self.settings.topics.reports
        highwater = self.app.consumer.highwater(TP(reports, source))
        if highwater is None:
            return False
        committed = self._committed_sources.get(source)
        if committed is None:
            committed = (await self.committed_offsets(reports, [source])).get(source, 0)
            self._committed_sources[source] = committed
        return committed >= highwater

    # ------------------------------------------------------------------ stage 2: detect

    async def on_routed(self, partition: int, records: list[tuple[int, bytes, int]]) -> None:
        core = await self.ensure_core(partition)
        async with self._step:
            if self.cores.get(partition) is not core:
                return  # taken away meanwhile: its new owner processes it
            topic = self.settings.topics.routed
            records = await self._starting_at(topic, partition, core.position, records)
            if not records:
                return
            out = core.on_routed(records, now_ms())
            await self.produce(out)
            await self.maybe_checkpoint_partition(partition, core, in_event=True)

    async def ensure_core(self, partition: int) -> RegionCore:
        """The detector of a routed partition, restored from its checkpoint on first use: the
        windows read again from the routed topic, and what was processed after the checkpoint
        (up to the group's committed offset) taken in silently."""
        core = self.cores.get(partition)
        if core is not None:
            return core
        lock = self._restore_locks.setdefault(partition, asyncio.Lock())
        async with lock:
            core = self.cores.get(partition)
            if core is not None:
                return core
            core = await self._restore(partition)
            if partition not in self._assigned:
                return core  # taken away while it was restored: not this process's any more
            self.cores[partition] = core
            self._update_ready()
            return core

    async def _restore(self, partition: int) -> RegionCore:
        settings = self.settings
        topics = settings.topics
        current = now_ms()
        core = RegionCore(
            self.params,
            self.regions,
            partition,
            topics.routed,
            channels=range(self.reports_partition_count()),
            now_ms=current,
            future_tolerance_s=settings.detection.future_tolerance_s,
            idle_advance=settings.worker.idle_advance,
            source_topic=topics.reports,
            source_actions_topic=topics.actions,
        )
        key = checkpoint_key(partition)
        blob = self.state.get(key)
        committed = (await self.committed_offsets(topics.routed, [partition])).get(partition, 0)
        if not blob:
            # no checkpoint: processing starts at the group's committed offset (the start of
            # the partition for a new group), as for an unsharded worker
            if committed:
                core.start_at(committed)
            log.info(logfmt("fresh_start", partition=partition, offset=committed))
            return core
        checkpoint = self._decoded(blob, key)
        core.restore(checkpoint, current)
        values = await self.read_range(
            topics.routed, partition, core.rebuild_offset(checkpoint), core.position
        )
        rebuilt = core.rebuild_routed(v for _, v, _ in values)
        caught_up = 0
        if committed > core.position:
            records = await self.read_range(topics.routed, partition, core.position, committed)
            self._count(core.on_routed(records, current, silent=True))
            caught_up = len(records)
        log.info(
            logfmt(
                "checkpoint_restored",
                partition=partition,
                seq=checkpoint["seq"],
                incidents=len(core.detector.incidents),
                rebuilt_reports=rebuilt,
                caught_up=caught_up,
            )
        )
        return core

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        topic = self.settings.topics.routed
        mine = {tp.partition for tp in assigned if tp.topic == topic}
        async with self._step:
            for partition in list(self.cores):
                if partition not in mine:
                    # its new owner restores it from the checkpoint; if it comes back here,
                    # so does this process (the state may have moved on meanwhile)
                    del self.cores[partition]
            self._assigned = mine
        sources = sorted(
            tp.partition for tp in assigned if tp.topic == self.settings.topics.reports
        )
        self._sources = sources
        for source in list(self.router.sources):
            if source not in sources:
                del self.router.sources[source]
        for source in list(self._source_next):
            if source not in sources:
                del self._source_next[source]  # if it comes back: from the group's commit
        actions = {tp.partition for tp in assigned if tp.topic == self.settings.topics.actions}
        for source in list(self._source_action_next):
            if source not in actions:
                del self._source_action_next[source]
        self._committed_sources.clear()
        log.info(
            logfmt(
                "partitions_assigned",
                routed=",".join(map(str, sorted(mine))) or "none",
                reports=",".join(map(str, sources)) or "none",
            )
        )
        self._update_ready()

    def _update_ready(self) -> None:
        self.ready = self._settled() and all(p in self.cores for p in self._assigned)

    # ------------------------------------------------------------------ time, state

    def _settled(self) -> bool:
        """No rebalance or changelog recovery under way: the checkpoints of the partitions
        assigned are in the table."""
        app = self.app
        return not app.rebalancing and not app.in_recovery

    async def on_tick(self, checkpoint: bool) -> None:
        await self.send_marks()
        if self._settled():
            # a partition without traffic is restored too: its quiet incidents resolve
            for partition in sorted(self._assigned):
                await self.ensure_core(partition)
        self._update_ready()
        async with self._step:
            current = now_ms()
            for partition, core in sorted(self.cores.items()):
                await self.produce(core.tick(current))
                if checkpoint:
                    await self.maybe_checkpoint_partition(partition, core, in_event=False)
            self._publish_state(current)

    async def maybe_checkpoint_partition(
        self, partition: int, core: RegionCore, in_event: bool, force: bool = False
    ) -> None:
        last = self._last_checkpoint.get(partition, 0.0)
        every = self._checkpoint_every.get(partition, CHECKPOINT_INTERVAL_S)
        if not force and time.monotonic() - last < every:
            return
        detector = core.detector
        marker = (
            detector.counts.copy(),
            sum(core.totals.values()),
            detector.clock_ms,
            len(detector.incidents),
            core.position,
        )
        if marker == self._checkpointed.get(partition) and not force:
            return
        self._checkpointed[partition] = marker
        started = time.monotonic()
        blob = encode(core.checkpoint())
        for key, value in stored(checkpoint_key(partition), blob, core.checkpoint_seq):
            if in_event:
                self.state[key] = value  # the current event's partition: this one
            else:  # memory store, from the timer: no current event to take the partition from
                self.state.data[key] = value
                self.state.send_changelog(partition, key, value)
        self._last_checkpoint[partition] = now = time.monotonic()
        self._checkpoint_every[partition] = checkpoint_interval(
            now - started, partitions=len(self.cores)
        )
        log.debug(logfmt("checkpoint", partition=partition, seq=core.checkpoint_seq))

    def stats(self) -> dict:
        totals: Counter[str] = Counter()
        partitions = {}
        for partition, core in sorted(self.cores.items()):
            totals.update(core.totals)
            partitions[partition] = core.stats()
        rejected = totals.get("rejected", 0) + sum(self.routed_rejections.values())
        return {
            "totals": {
                "accepted": totals.get("accepted", 0),
                "rejected": rejected,
                "duplicate": totals.get("duplicate", 0),
                "unclassified": totals.get("unclassified", 0),
                "halo": totals.get("halo", 0),
            },
            "routed_partitions": partitions,
            "halo_copies_sent": self.halo_copies,
            "state_reports": sum(p["state_reports"] for p in partitions.values()),
            "open_incidents": sum(
                len([i for i in c.detector.open_incidents() if c.owns(i.incident_id)])
                for c in self.cores.values()
            ),
        }

    def _bursts(self) -> list:
        return [burst for core in self.cores.values() for burst in core.take_bursts()]

    def _publish_state(self, current: int) -> None:
        open_by_category: dict[str, int] = {}
        state_reports = active_cells = chance_groups = 0
        lag: float | None = None
        for core in self.cores.values():
            detector = core.detector
            for incident in detector.open_incidents():
                if core.owns(incident.incident_id):
                    category = incident.category
                    open_by_category[category] = open_by_category.get(category, 0) + 1
            state_reports += detector.state_reports
            active_cells += detector.active_cells
            chance_groups += detector.chance_groups
            core_lag = core.event_time_lag_s(current)
            if core_lag is not None and (lag is None or core_lag > lag):
                lag = core_lag
        # each routed partition keeps the reputation of the reporters it saw: summed (a
        # reporter seen by two partitions counts in both)
        reputation = None
        summaries = [c.detector.reputation.summary() for c in self.cores.values()]
        if summaries:
            held = sum(s["reporters"] for s in summaries)
            reputation = {
                "reporters": held,
                "below_half": sum(s["below_half"] for s in summaries),
                "evicted": sum(s["evicted"] for s in summaries),
                "mean_multiplier": (
                    sum(s["mean_multiplier"] * s["reporters"] for s in summaries) / held
                    if held
                    else summaries[0]["mean_multiplier"]
                ),
            }
        self.metrics.set_state(
            active_cells=active_cells,
            state_reports=state_reports,
            open_incidents=open_by_category,
            event_time_lag_s=lag,
            chance_groups=chance_groups,
            reputation=reputation,
        )
        # both stages' lag: the reports partitions it routes, the routed ones it detects on
        topic = self.settings.topics.routed
        lags: dict[tuple[str, int], int] = {}
        for partition, core in self.cores.items():
            highwater = self.app.consumer.highwater(TP(topic, partition))
            if highwater is not None:
                lags[(topic, partition)] = max(0, highwater - core.position)
        reports = self.settings.topics.reports
        for partition in self._sources:
            highwater = self.app.consumer.highwater(TP(reports, partition))
            if highwater is not None:
                done = self._source_next.get(partition, 0)
                lags[(reports, partition)] = max(0, highwater - done)
        self.metrics.set_consumer_lag(lags)


def _ignore_outcome(future: Any) -> None:
    """A mark's delivery is not waited for; its failure (an outage) is not an error."""
    if not future.cancelled():
        future.exception()
