"""Play a simulation into Kafka in (scaled) real time.

Event time runs ``speed`` times faster than wall time. ``anchor="start"`` shifts event time so the
stream starts now; with ``speed > 1`` event time then runs ahead of the wall clock, and a worker
that rejects reports more than 5 min in the future (CONTRACT §1 ``future_timestamp``) starts
rejecting after ``300 / (speed - 1)`` s. ``anchor="end"`` shifts it so the stream ends now instead:
event time starts in the past and catches up with the wall clock at the last report, never ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .simulate import Simulation, report_to_json

log = logging.getLogger(__name__)

ANCHORS = ("start", "end")


@dataclass(frozen=True, slots=True)
class LiveOptions:
    brokers: str
    topic: str = "reports"
    speed: float = 1.0
    anchor: str = "start"
    connect_attempts: int = 10
    send_attempts: int = 5
    # security keyword arguments for the producer (stream/security.py, from [kafka])
    client_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scheduled:
    wall_offset_s: float
    key: bytes
    value: bytes


def live_shift_ms(sim: Simulation, now_ms: int, speed: float, anchor: str = "start") -> int:
    """How far to move event time so the stream starts (or, anchored at the end, ends) now."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}")
    shift_ms = now_ms - sim.params.start_ms
    if anchor == "end":
        duration_ms = sim.params.end_ms - sim.params.start_ms
        shift_ms -= round(duration_ms * (1 - 1 / speed))
    return shift_ms


def schedule(sim: Simulation, shift_ms: int, speed: float) -> list[Scheduled]:
    """Each report with the wall-clock offset at which to send it and its shifted JSON."""
    start_ms = sim.params.start_ms
    return [
        Scheduled(
            wall_offset_s=max(0.0, (report.arrival_ms - start_ms) / speed / 1000),
            key=report.reporter.encode(),
            value=orjson.dumps(report_to_json(report, shift_ms)),
        )
        for report in sim.reports
    ]


SendFn = Callable[[str, bytes, bytes], Awaitable[None]]


async def pace(
    items: list[Scheduled],
    topic: str,
    send: SendFn,
    stop: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Send each item at its offset from now; returns how many were sent before stop or the end."""
    started = clock()
    sent = 0
    for item in items:
        wait_s = item.wall_offset_s - (clock() - started)
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait_s)
        if stop.is_set():
            break
        await send(topic, item.key, item.value)
        sent += 1
    return sent


async def _start_producer(options: LiveOptions):  # -> AIOKafkaProducer
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    delay_s = 0.5
    for attempt in range(1, options.connect_attempts + 1):
        producer = AIOKafkaProducer(
            bootstrap_servers=options.brokers.split(","),
            client_id="geoincident-simulate",
            acks=1,
            linger_ms=5,
            request_timeout_ms=15_000,
            retry_backoff_ms=250,
            **options.client_options,
        )
        try:
            await producer.start()
            return producer
        except (KafkaError, OSError) as exc:
            await producer.stop()
            if attempt == options.connect_attempts:
                raise
            # The broker may still be starting (demo): back off and try again.
            log.warning("broker %s not reachable (%s), retrying", options.brokers, exc)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)
    raise AssertionError("unreachable")


async def produce(
    sim: Simulation,
    options: LiveOptions,
    stop: asyncio.Event | None = None,
    shift_ms: int | None = None,
) -> int:
    """Produce the simulation to Kafka, paced; stops cleanly on ``stop`` or cancellation."""
    from aiokafka.errors import KafkaError

    stop = stop or asyncio.Event()
    if shift_ms is None:
        shift_ms = live_shift_ms(sim, round(time.time() * 1000), options.speed, options.anchor)
    items = schedule(sim, shift_ms, options.speed)
    producer = await _start_producer(options)

    async def send(topic: str, key: bytes, value: bytes) -> None:
        for attempt in range(1, options.send_attempts + 1):
            try:
                await producer.send_and_wait(topic, value, key=key)
                return
            except KafkaError:
                if attempt == options.send_attempts:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)

    try:
        return await pace(items, options.topic, send, stop)
    finally:
        # Flushes what is buffered; also runs on cancellation (Ctrl-C in asyncio.run).
        await producer.stop()


async def produce_until_signal(
    sim: Simulation, options: LiveOptions, shift_ms: int | None = None
) -> int:
    """``produce`` with SIGINT/SIGTERM turned into a clean stop (for the CLI)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        return await produce(sim, options, stop, shift_ms)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
