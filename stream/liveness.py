"""Is the broker there? The worker's view of a broker outage: a background probe for `/ready`,
the `geoincident_broker_*` metrics and a few log lines, and a throttle on the Kafka clients'
own log.

During an outage the worker's Kafka clients (aiokafka, under Faust) keep reconnecting by
themselves and resume where they were once the broker answers: nothing needs restarting, and
the process must not exit (a restart could not connect either). What they do not do is say so
in a usable way: a broker that refuses connections makes them log an ERROR line for every
retry (about 55 lines a second, measured on a 30 s outage), and a broker that hangs makes them
log nothing at all while `/ready` stays 200. Hence:

* :class:`BrokerLiveness`: every PROBE_INTERVAL_S it opens a fresh connection to each
  bootstrap broker at once (TLS and SASL as configured) and sends a Metadata request naming no
  topic (brokers only: cheap, and it cannot create a topic). One answer within
  PROBE_TIMEOUT_S means the broker is up. FAILURES_TO_DOWN failed probes in a row mean it is
  down: `/ready` turns 503, `geoincident_broker_up` 0, `geoincident_broker_outages_total` +1,
  one `event=broker_unreachable` line. While it is down the probe backs off exponentially
  (BACKOFF_FIRST_S doubling up to BACKOFF_MAX_S, so readiness returns at most that long after
  the broker does), a reminder line comes every REMIND_EVERY_S, and the first answer ends the
  outage: `event=broker_reachable down_s=...`. A fresh connection per probe tests what a
  restarted client would need (DNS, TCP, TLS, SASL), not a socket that happens to be open; a
  hanging broker is caught by the timeout, a refusing one at once.
* :class:`ClientLogThrottle`: a filter on the log handlers that lets the first WARNING or
  ERROR of each Kafka-client message template through, then one per THROTTLE_EVERY_S carrying
  the count held back (exceptions included: no traceback per retry). Such a line also wakes
  the probe (a refused connection is then seen within a probe, not an interval).

What the probe does not do: it neither commits nor produces nor pauses anything. Processing
stops by itself during an outage (no records arrive, produce requests wait for their acks, a
commit waits for the coordinator) and resumes by itself; at-least-once is kept by the worker's
step lock and Faust's commit, which never pass outputs that were not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from geoincident.stream.metrics import WorkerMetrics

log = logging.getLogger("geoincident.worker")

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 4.0
FAILURES_TO_DOWN = 2
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0
REMIND_EVERY_S = 60.0
# After a probe, the next one waits at least this long even when a client error wakes it.
MIN_PROBE_GAP_S = 0.5
THROTTLE_EVERY_S = 60.0
# Loggers of the Kafka clients: their warnings and errors repeat once per retry.
CLIENT_LOGGERS = ("aiokafka", "faust.transport")


def _logfmt(event: str, **fields: Any) -> str:
    # the worker's one line format; imported here because stream/app.py imports this module
    from geoincident.stream.app import logfmt

    return logfmt(event, **fields)


class ClientLogThrottle(logging.Filter):
    """Rate-limits the Kafka clients' repeated warnings and errors, per message template.

    The first record of a template passes; later ones within `every_s` of the last one that
    passed are held back and counted; the next to pass after that says how many were. Records
    of other loggers, and the clients' records below WARNING, always pass. Thread-safe (Faust
    runs its consumer in a thread of its own); a record seen by several handlers is decided
    once.
    """

    def __init__(
        self,
        every_s: float = THROTTLE_EVERY_S,
        on_client_error: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.every_s = every_s
        self.on_client_error = on_client_error
        self.clock = clock
        self.suppressed = 0  # records held back since the start
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(CLIENT_LOGGERS):
            return True
        decided = getattr(record, "_geoincident_throttle", None)
        if decided is not None:
            return bool(decided)
        if self.on_client_error is not None:
            self.on_client_error()
        key = (record.name, str(record.msg))
        with self._lock:
            now = self.clock()
            last = self._last.get(key)
            if last is not None and now - last[0] < self.every_s:
                self._last[key] = (last[0], last[1] + 1)
                self.suppressed += 1
                passes = False
            else:
                held = last[1] if last is not None else 0
                if held:
                    record.msg = (
                        f"{record.getMessage()} [and {held} more like it in the last "
                        f"{now - last[0]:.0f} s]"  # type: ignore[index]
                    )
                    record.args = None
                self._last[key] = (now, 0)
                passes = True
        record._geoincident_throttle = passes  # type: ignore[attr-defined]
        return passes

    def install(self, logger: logging.Logger | None = None) -> None:
        """Add this filter to every handler of `logger` (the root logger by default)."""
        for handler in (logger or logging.getLogger()).handlers:
            if self not in handler.filters:
                handler.addFilter(self)


class BrokerLiveness:
    """The broker probe: `up`, the metrics and the log lines of an outage (module docstring).

    `up` starts True: the worker only gets going after reaching the broker (it creates its
    topics first). Run :meth:`run` as a task of the worker's event loop.
    """

    def __init__(
        self,
        brokers: str,
        client_options: Mapping[str, Any],
        metrics: WorkerMetrics,
        *,
        client_id: str = "geoincident-liveness",
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
        failures_to_down: int = FAILURES_TO_DOWN,
        backoff_first_s: float = BACKOFF_FIRST_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        remind_every_s: float = REMIND_EVERY_S,
    ) -> None:
        self.brokers = ",".join(b.strip() for b in brokers.split(",") if b.strip())
        self.hosts = [(host, port) for host, port, _ in collect_hosts(self.brokers, False)]
        self.client_options = dict(client_options)
        self.metrics = metrics
        self.client_id = client_id
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.failures_to_down = failures_to_down
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.remind_every_s = remind_every_s
        self.throttle = ClientLogThrottle(on_client_error=self.suspect)
        self.up = True
        self.metrics.set_broker_up(True)
        self._failures = 0  # failed probes in a row
        self._first_failure = 0.0
        self._reminded = 0.0
        self._suppressed_at_down = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Probe until cancelled (the worker stops)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.throttle.install()
        while True:
            self._wake.clear()
            error = await self.probe()
            self.record(error, time.monotonic())
            await self._pause(self.next_delay_s())

    def record(self, error: str | None, now: float) -> None:
        """Take one probe's outcome (None: a broker answered) at monotonic time `now`."""
        if error is None:
            if not self.up:
                self._reachable(now)
            self._failures = 0
            return
        self._failures += 1
        if self._failures == 1:
            self._first_failure = now
        if self.up and self._failures >= self.failures_to_down:
            self._unreachable(now, error)
        elif not self.up and now - self._reminded >= self.remind_every_s:
            self._reminded = now
            log.warning(
                _logfmt(
                    "broker_still_unreachable",
                    brokers=self.brokers,
                    down_s=f"{now - self._first_failure:.1f}",
                    attempts=self._failures,
                    error=error,
                )
            )

    def next_delay_s(self) -> float:
        """Seconds to the next probe: the interval while up, else capped exponential backoff."""
        if self._failures == 0:
            return self.interval_s
        return min(self.backoff_first_s * 2 ** (self._failures - 1), self.backoff_max_s)

    def suspect(self) -> None:
        """A Kafka client reported trouble: probe soon (while up; while down the backoff
        rules). Safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or not self.up:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(wake.set)

    async def _pause(self, delay_s: float) -> None:
        assert self._wake is not None
        gap = min(MIN_PROBE_GAP_S, delay_s)
        await asyncio.sleep(gap)
        if self._failures == 0:
            # a client error since the last probe started cuts the wait short
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay_s - gap)
        else:
            await asyncio.sleep(delay_s - gap)

    # ------------------------------------------------------------------ transitions

    def _unreachable(self, now: float, error: str) -> None:
        self.up = False
        self._reminded = now
        self._suppressed_at_down = self.throttle.suppressed
        self.metrics.set_broker_up(False)
        self.metrics.count_broker_outage()
        log.warning(
            _logfmt(
                "broker_unreachable",
                brokers=self.brokers,
                failed_probes=self._failures,
                error=error,
                detail="not ready until a broker answers; the Kafka clients keep reconnecting "
                "and processing resumes from where it stopped, nothing committed past what was "
                "produced",
            )
        )

    def _reachable(self, now: float) -> None:
        self.up = True
        self.metrics.set_broker_up(True)
        log.info(
            _logfmt(
                "broker_reachable",
                brokers=self.brokers,
                down_s=f"{now - self._first_failure:.1f}",
                attempts=self._failures,
                client_log_lines_suppressed=self.throttle.suppressed - self._suppressed_at_down,
            )
        )

    # ------------------------------------------------------------------ one probe

    async def probe(self) -> str | None:
        """None when a bootstrap broker answered a Metadata request in time, else why not."""
        try:
            await asyncio.wait_for(self._any_answers(), self.timeout_s)
        except TimeoutError:
            return f"no answer in {self.timeout_s:g} s"
        except Exception as error:  # noqa: BLE001 - any failure to answer is a failed probe
            text, name = str(error), type(error).__name__
            return text if text.startswith(name) else f"{name}: {text}"
        return None

    async def _any_answers(self) -> None:
        tasks = [asyncio.ensure_future(self._ask(host, port)) for host, port in self.hosts]
        try:
            last: BaseException | None = None
            for finished in asyncio.as_completed(tasks):
                try:
                    await finished
                    return
                except Exception as error:  # noqa: BLE001 - another broker may answer
                    last = error
            assert last is not None
            raise last
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ask(self, host: str, port: int) -> None:
        conn = await create_conn(
            host,
            port,
            client_id=self.client_id,
            request_timeout_ms=int(self.timeout_s * 1000),
            **self.client_options,
        )
        try:
            response = await conn.send(MetadataRequest([]))
        finally:
            conn.close()
        if not response.brokers:
            raise KafkaError(f"{host}:{port} answered with no broker in its metadata")
