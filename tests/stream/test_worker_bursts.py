"""The worker counts each new-reporter burst once in its metric and logs it once
(detectors/bursts.py; docs/operations.md). The real Worker, WorkerCore and Detector; no broker:
its steps are driven here the way the agents drive them (a batch, then the count)."""

from __future__ import annotations

import logging

import orjson

from geoincident.stream.app import Worker
from geoincident.stream.config import load_settings
from tests.deploy.test_metrics import value

T0_MS = 1_795_510_800_000


def _records(first: int, count: int, step_ms: int) -> list[tuple[int, bytes, int]]:
    """New reporters, each on their own phone, one every `step_ms` at one corner."""
    records = []
    for n in range(first, first + count):
        body = {
            "id": f"r{n}",
            "ts": T0_MS + n * step_ms,
            "lat": 47.6 + (n % 7) * 0.0001,
            "lon": -122.3,
            "reporter": f"u{n}",
            "device": f"phone-{n}",
            "tags": ["#lightout"],
        }
        records.append((n, orjson.dumps(body), 0))
    return records


def test_a_burst_is_counted_and_logged_once_by_the_worker(tmp_path, caplog):
    worker = Worker(load_settings(overrides={"worker.data_dir": str(tmp_path)}))
    caplog.set_level(logging.WARNING, logger="geoincident.worker")
    # 60 first-time reporters, one every 2 s, in three batches; then a report elsewhere five
    # minutes on: the watermark trails what was read by the lateness (120 s), so it is what
    # makes the detector process them
    for first in (0, 20, 40):
        worker._count(worker.core.on_reports(0, _records(first, 20, 2000), None))
    far = {"id": "far", "ts": T0_MS + 300_000, "lat": 47.0, "lon": -120.0, "reporter": "far"}
    far_record = (60, orjson.dumps({**far, "tags": ["#pothole"]}), 0)
    worker._count(worker.core.on_reports(0, [far_record], None))
    lines = [r.getMessage() for r in caplog.records if "new_reporter_burst" in r.getMessage()]
    assert lines == [
        "event=new_reporter_burst category=streetlight_out lat=47.6002 lon=-122.3 "
        "at=2026-11-24T09:00:18.000Z reporters=10 devices=10"
    ]
    metric = "geoincident_new_reporter_bursts_total"
    assert value(worker.metrics, metric, category="streetlight_out") == 1
    assert value(worker.metrics, metric, category="pothole") == 0
    assert worker.core.detector.bursts.counts == {"streetlight_out": 1}
