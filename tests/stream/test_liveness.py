"""The broker probe's state, metrics and log lines, and the Kafka clients' log throttle
(stream/liveness.py). A real broker going away is tests/integration/test_broker_outage.py."""

from __future__ import annotations

import asyncio
import logging
import socket

from geoincident.stream.liveness import BrokerLiveness, ClientLogThrottle
from geoincident.stream.metrics import WorkerMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _logger(name: str, *handlers: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.handlers[:] = list(handlers)
    logger.setLevel(logging.DEBUG)
    return logger


def _value(metrics: WorkerMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_a_repeated_client_error_passes_once_then_once_per_period_with_the_count():
    clock, seen = Clock(), Collect()
    throttle = ClientLogThrottle(every_s=60.0, clock=clock)
    seen.addFilter(throttle)
    client = _logger("aiokafka.test_throttle", seen)
    for n in range(500):  # ~10 retries a second
        clock.now = n * 0.1
        client.error("Unable connect to node with id %s: %s", 1, "Connection refused")
    assert seen.lines[0] == "Unable connect to node with id 1: Connection refused"
    assert len(seen.lines) == 1 and throttle.suppressed == 499
    clock.now = 60.0
    client.error("Unable connect to node with id %s: %s", 1, "Connection refused")
    assert seen.lines[1].startswith("Unable connect to node with id 1: Connection refused [and ")
    assert "499 more like it in the last 60 s" in seen.lines[1]


def test_each_message_template_has_its_own_allowance():
    seen = Collect()
    seen.addFilter(ClientLogThrottle(clock=Clock()))
    client = _logger("aiokafka.test_templates", seen)
    for _ in range(20):
        client.error("Unable connect to node with id %s", 1)
        client.warning("Got error produce response: %s", "NodeNotReadyError")
    assert seen.lines == [
        "Unable connect to node with id 1",
        "Got error produce response: NodeNotReadyError",
    ]


def test_the_workers_own_lines_and_client_info_lines_are_never_held_back():
    seen = Collect()
    seen.addFilter(ClientLogThrottle(clock=Clock()))
    worker = _logger("geoincident.worker.test_throttle", seen)
    client = _logger("aiokafka.test_info", seen)
    for _ in range(5):
        worker.error("event=broker_unreachable")
        client.info("Discovered coordinator 1")
    assert len(seen.lines) == 10


def test_a_repeated_traceback_is_held_back_too():
    seen = Collect()
    seen.setFormatter(logging.Formatter("%(message)s"))
    seen.addFilter(ClientLogThrottle(clock=Clock()))
    client = _logger("faust.transport.test_traceback", seen)
    for _ in range(50):
        try:
            raise ConnectionError("reset by peer")
        except ConnectionError:
            client.exception("Got exception: %r", "commit")
    assert sum("Traceback" in line for line in seen.lines) == 1


def test_a_record_reaching_two_handlers_is_decided_once():
    first, second = Collect(), Collect()
    throttle = ClientLogThrottle(clock=Clock())
    first.addFilter(throttle)
    second.addFilter(throttle)
    client = _logger("aiokafka.test_two_handlers", first, second)
    client.error("Failed fetch messages from %s", 1)
    client.error("Failed fetch messages from %s", 1)
    assert first.lines == second.lines == ["Failed fetch messages from 1"]
    assert throttle.suppressed == 1


def _liveness(**kwargs) -> tuple[BrokerLiveness, WorkerMetrics]:
    metrics = WorkerMetrics()
    return BrokerLiveness("kafka-1:9092,kafka-2:9092", {}, metrics, **kwargs), metrics


def test_two_failed_probes_in_a_row_are_an_outage_and_one_answer_ends_it(caplog):
    caplog.set_level(logging.INFO, logger="geoincident.worker")
    liveness, metrics = _liveness()
    assert liveness.up and _value(metrics, "geoincident_broker_up") == 1
    liveness.record("no answer in 4 s", 0.0)
    assert liveness.up, "one lost probe is not an outage"
    liveness.record(None, 2.0)
    liveness.record("ConnectionRefusedError: refused", 4.0)
    liveness.record("ConnectionRefusedError: refused", 4.5)
    assert not liveness.up
    assert _value(metrics, "geoincident_broker_up") == 0
    assert _value(metrics, "geoincident_broker_outages_total") == 1
    for n in range(10):
        liveness.record("ConnectionRefusedError: refused", 5.0 + n)
    assert _value(metrics, "geoincident_broker_outages_total") == 1
    liveness.record(None, 34.5)
    assert liveness.up and _value(metrics, "geoincident_broker_up") == 1
    lines = [r.getMessage() for r in caplog.records if "event=broker" in r.getMessage()]
    assert lines[0].startswith("event=broker_unreachable brokers=kafka-1:9092,kafka-2:9092 ")
    assert 'error="ConnectionRefusedError: refused"' in lines[0]
    assert lines[1].startswith("event=broker_reachable brokers=kafka-1:9092,kafka-2:9092 ")
    assert "down_s=30.5 attempts=12 " in lines[1]
    assert len(lines) == 2


def test_the_probe_backs_off_exponentially_up_to_a_cap_while_the_broker_is_away():
    liveness, _ = _liveness(interval_s=2.0, backoff_first_s=0.5, backoff_max_s=5.0)
    assert liveness.next_delay_s() == 2.0
    delays = []
    for n in range(8):
        liveness.record("refused", float(n))
        delays.append(liveness.next_delay_s())
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    liveness.record(None, 9.0)
    assert liveness.next_delay_s() == 2.0


def test_a_long_outage_is_recalled_once_a_minute_not_once_a_probe(caplog):
    caplog.set_level(logging.INFO, logger="geoincident.worker")
    liveness, _ = _liveness(remind_every_s=60.0)
    now = 0.0
    while now < 600.0:  # ten minutes, a probe every 5 s
        liveness.record("no answer in 4 s", now)
        now += 5.0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("event=broker_unreachable" in m for m in messages) == 1
    assert sum("event=broker_still_unreachable" in m for m in messages) == 9


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_probe_of_a_closed_port_fails_at_once():
    metrics = WorkerMetrics()
    liveness = BrokerLiveness(f"127.0.0.1:{_closed_port()}", {}, metrics, timeout_s=30.0)
    error = await liveness.probe()
    assert error is not None and "refused" in error.lower()
    name = error.split(":")[0]
    assert error.count(name) == 1, error


async def test_a_probe_of_a_broker_that_never_answers_times_out():
    with socket.socket() as silent:  # connections complete in the backlog; nothing answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        liveness = BrokerLiveness(f"127.0.0.1:{port}", {}, WorkerMetrics(), timeout_s=0.3)
        assert await liveness.probe() == "no answer in 0.3 s"


async def test_a_client_error_wakes_the_probe_before_its_interval():
    liveness, _ = _liveness(interval_s=3600.0)
    probes = asyncio.Queue()

    async def probe() -> None:
        probes.put_nowait(True)
        return None

    liveness.probe = probe  # type: ignore[method-assign]
    root = logging.getLogger()
    handler = Collect()  # run() puts its throttle on the root logger's handlers
    root.addHandler(handler)
    task = asyncio.ensure_future(liveness.run())
    try:
        await asyncio.wait_for(probes.get(), 10)
        await asyncio.sleep(0.05)
        logging.getLogger("aiokafka.test_wake").error("Unable connect to node with id %s", 1)
        # without the wake-up the next probe would come in an hour
        await asyncio.wait_for(probes.get(), 10)
    finally:
        task.cancel()
        root.removeHandler(handler)
        for other in root.handlers:
            other.removeFilter(liveness.throttle)
