"""The reputation's bound in a real worker on a real broker: `[reputation] max_reporters` set
through the environment holds the reporters the worker keeps, and the metrics say how many it
forgot early."""

from __future__ import annotations

import random
import time

import orjson

from tests.integration.workers import WorkerProcess, create_topics, produce, topic_names

BOUND = 50


def test_the_worker_holds_at_most_max_reporters(bootstrap, topic_name, tmp_path):
    """600 reports of 600 new reporters, scattered over the US (none agree) and spread over
    40 minutes of event time: those that leave their 15-minute window free (the ones more than
    the window and the lateness bound behind the newest, some 340) are recorded against their
    reporters, and the worker keeps at most BOUND of them."""
    names = topic_names(topic_name)
    create_topics(bootstrap, names)
    worker = WorkerProcess(
        bootstrap, names, tmp_path, GEOINCIDENT_REPUTATION__MAX_REPORTERS=str(BOUND)
    ).start()
    rng = random.Random(5)
    start_ms = int(time.time() * 1000) - 40 * 60_000
    values = [
        orjson.dumps(
            {
                "id": f"bound-{n}",
                "ts": start_ms + n * 4_000,
                "lat": round(rng.uniform(30, 45), 5),
                "lon": round(rng.uniform(-120, -75), 5),
                "reporter": f"reporter-{n}",
                "source": "app",
                "tags": ["#pothole"],
            }
        )
        for n in range(600)
    ]
    try:
        worker.wait_until(lambda: worker.get("/ready")[0] == 200, timeout_s=120)
        produce(bootstrap, names["reports"], values)
        worker.wait_until(lambda: worker.processed() >= 600, timeout_s=120)
        worker.wait_until(
            lambda: (worker.metric("geoincident_reporters_evicted_total") or 0) > 0,
            timeout_s=60,
        )
        # the metrics follow the detector a few seconds behind: read them once they settle
        time.sleep(3)
        tracked = worker.metric("geoincident_reporters_tracked")
        evicted = worker.metric("geoincident_reporters_evicted_total")
    finally:
        worker.stop()
    assert tracked == BOUND
    assert evicted is not None and evicted >= 250
