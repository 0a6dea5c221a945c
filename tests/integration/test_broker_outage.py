"""A running `geoincident worker` across a 30 s broker outage (real Tansu, real worker process).

Acceptance (issue): the broker stopped for 30 s and started again: the worker stays up, `/health`
and `/metrics` keep answering, `/ready` is false during the outage and true after it, processing
resumes with nothing lost, and the log holds no storm of errors or tracebacks.

Tansu keeps its data in memory only, so stopping its process would also lose every topic and
offset, which a real broker never does. The outage is therefore made in front of it, in two
ways (tests/integration/outage.py), one test each:

* `refused`: the relay between worker and broker resets every connection and refuses new ones
  for 30 s, then accepts them again; the client's view of a broker process stopped and started
  again (a restart, a crash, a deploy of the broker), with its data kept as on disk.
* `hung`: the broker process is frozen with SIGSTOP for 30 s, then SIGCONT: connections stay
  open, connects are accepted by the kernel, nothing answers (a partition, a stalled machine).
  Nothing in the worker's Kafka clients times out within 30 s: without the broker probe the
  worker would log nothing and stay ready.

In both, three planted incidents bracket the outage: one opened before it, one whose reports
are processed just before the outage starts (its `opened` event and its offsets' commit may
fall into the outage), and one produced after it.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable

import orjson
import pytest

from geoincident.geo import destination
from tests.integration.outage import ProxiedBroker
from tests.integration.workers import (
    Tail,
    WorkerProcess,
    committed,
    create_topics,
    planted_clusters,
    produce,
    topic_names,
    without_emitted_at,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 30.0
SAMPLE_EVERY_S = 0.5
# Unthrottled, a refused broker makes the Kafka clients log ~3,400 lines in a 30 s outage (an
# ERROR per retry); throttled, the first of each kind and the worker's own line remain.
MAX_LINES_DURING_OUTAGE = 40
CENTRE = (47.6062, -122.3321)


def _cluster(tag: str, category: str, bearing: float) -> list[bytes]:
    """Five reporters agreeing on one place 3 km from the centre, and one report far away that
    moves event time past them: one incident. Report ids and reporters carry `tag`."""
    now_ms = time.time_ns() // 1_000_000
    place = (category, *destination(*CENTRE, bearing, 3000.0))
    values = []
    for raw in planted_clusters(now_ms, [place], ago_ms=600_000, step_ms=30_000, spread_m=30.0):
        value = orjson.loads(raw)
        value["id"], value["reporter"] = f"{tag}-{value['id']}", f"{tag}-{value['reporter']}"
        values.append(orjson.dumps(value))
    return values


def _gauge(worker: WorkerProcess, name: str) -> float:
    value = worker.metric(name)
    assert value is not None, f"{name} not in /metrics"
    return value


def _opened(incidents: Tail, category: str) -> list[dict]:
    return [
        v for v in list(incidents.values) if v["event"] == "opened" and v["category"] == category
    ]


def _log_lines(worker: WorkerProcess) -> list[str]:
    return worker.log_path.read_text(errors="replace").splitlines()


def _through_outage(
    worker: WorkerProcess, start: Callable[[], None], end: Callable[[], None]
) -> tuple[list[tuple[int, float]], list[str]]:
    """Start the outage, sample the worker every SAMPLE_EVERY_S for OUTAGE_S (the process must
    live, /health answer 200 and /metrics answer at every sample), end it. Returns the samples
    (/ready status, geoincident_broker_up) and the log lines written meanwhile."""
    before = len(_log_lines(worker))
    samples = []
    start()
    try:
        began = time.monotonic()
        while time.monotonic() - began < OUTAGE_S:
            assert worker.process is not None and worker.process.poll() is None, worker.tail()
            assert worker.get("/health")[0] == 200
            samples.append((worker.get("/ready")[0], _gauge(worker, "geoincident_broker_up")))
            time.sleep(SAMPLE_EVERY_S)
    finally:
        end()
    return samples, _log_lines(worker)[before:]


@pytest.mark.parametrize(
    ("mode", "scaled"), [("refused", False), ("hung", False), ("refused", True)]
)
def test_the_worker_rides_out_a_30_s_broker_outage(mode, scaled, topic_name, tmp_path):
    """`scaled`: the worker with [scale] set (it routes, then detects on the routed topic)."""
    with ProxiedBroker(tmp_path / "tansu.log") as broker:
        if mode == "refused":
            assert broker.proxy is not None
            start, end = broker.proxy.cut, broker.proxy.restore
        else:
            start = lambda: os.kill(broker.pid, signal.SIGSTOP)  # noqa: E731
            end = lambda: os.kill(broker.pid, signal.SIGCONT)  # noqa: E731
        names = topic_names(topic_name)
        create_topics(broker.bootstrap, names)
        scale = {}
        if scaled:
            scale = {
                "GEOINCIDENT_SCALE__REGION_RESOLUTION": "5",
                "GEOINCIDENT_TOPICS__ROUTED": topic_name("routed"),
            }
        worker = WorkerProcess(broker.bootstrap, names, tmp_path, **scale)
        try:
            with Tail(broker.bootstrap, names["incidents"]) as incidents:
                worker.start()
                worker.wait_until(lambda: worker.get("/ready")[0] == 200)
                assert _gauge(worker, "geoincident_broker_up") == 1
                sent = produce(broker.bootstrap, names["reports"], _cluster("a", "pothole", 0))
                worker.wait_until(lambda: len(_opened(incidents, "pothole")) == 1)
                # processed, and the outage starts at once: its outputs and commit may be in it
                sent += produce(broker.bootstrap, names["reports"], _cluster("c", "gas_leak", 120))
                worker.wait_until(lambda: worker.processed() == sent)

                samples, outage_log = _through_outage(worker, start, end)

                ready = [status for status, _ in samples]
                assert 503 in ready, "never not ready while the broker was away"
                first_down = ready.index(503)
                assert set(ready[first_down:]) == {503}, f"ready again mid-outage: {ready}"
                assert {up for _, up in samples[first_down:]} == {0.0}, samples
                worker.wait_until(lambda: worker.get("/ready")[0] == 200)
                assert _gauge(worker, "geoincident_broker_up") == 1
                assert _gauge(worker, "geoincident_broker_outages_total") == 1

                sent += produce(
                    broker.bootstrap, names["reports"], _cluster("b", "streetlight_out", 240)
                )
                worker.wait_until(lambda: worker.processed() == sent)
                for category in ("pothole", "gas_leak", "streetlight_out"):
                    worker.wait_until(lambda c=category: len(_opened(incidents, c)) >= 1)
                worker.wait_until(
                    lambda: (
                        committed(broker.bootstrap, names["group"], names["reports"]) == {0: sent}
                    )
                )
                opened = [without_emitted_at(v) for v in incidents.values if v["event"] == "opened"]
            assert worker.process is not None and worker.process.poll() is None
            assert worker.starts == 1
            totals = worker.totals()
            log = _log_lines(worker)
        finally:
            worker.stop()

    # each planted incident opened, and any repeat (at least once) is the same event
    for category in ("pothole", "gas_leak", "streetlight_out"):
        mine = [e for e in opened if e["category"] == category]
        assert mine and all(e == mine[0] for e in mine), category
    assert sum(n for outcome, n in totals.items() if outcome != "halo") == sent, totals
    # no storm: a bounded log during the outage, no traceback, one line each way
    assert len(outage_log) < MAX_LINES_DURING_OUTAGE, "\n".join(outage_log[-60:])
    assert not [line for line in log if "Traceback" in line], "\n".join(log[-60:])
    assert sum("event=broker_unreachable" in line for line in log) == 1
    back = [line for line in log if "event=broker_reachable" in line]
    assert len(back) == 1 and re.search(r"down_s=\d+\.\d", back[0]), back
