"""The Prometheus test helper, against a real prometheus binary and a real /metrics server."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from geoincident.stream.metrics import WorkerMetrics
from tests.deploy.prom import PrometheusServer, retargeted_config

pytestmark = pytest.mark.slow


def serve_metrics(metrics: WorkerMetrics) -> ThreadingHTTPServer:
    """A stand-in for the worker's web server: /metrics from ``WorkerMetrics.render``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body, content_type = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def worker_metrics() -> Iterator[tuple[WorkerMetrics, str]]:
    metrics = WorkerMetrics(categories=["pothole"])
    server = serve_metrics(metrics)
    try:
        yield metrics, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_scrapes_the_worker_registry_and_loads_the_rules(
    prometheus_binary: str, worker_metrics: tuple[WorkerMetrics, str]
) -> None:
    metrics, address = worker_metrics
    metrics.count_outcomes({"accepted": 7, "duplicate": 2})
    metrics.observe_latency(0.04)

    with PrometheusServer([address], binary=prometheus_binary) as prom:
        accepted = prom.wait_for('geoincident_reports_total{outcome="accepted"}')
        assert [float(s["value"][1]) for s in accepted] == [7.0]
        assert accepted[0]["metric"]["job"] == "geoincident"
        assert prom.query_value('up{job="geoincident"}') == 1
        assert prom.query_value("geoincident_detection_latency_seconds_count") == 1

        # A value changed after the first scrape shows up on a later one.
        metrics.count_outcomes({"accepted": 3})
        prom.wait_for(
            'geoincident_reports_total{outcome="accepted"}',
            until=lambda result: bool(result) and float(result[0]["value"][1]) == 10,
        )

        # The server also scrapes itself, as the shipped `prometheus` job does.
        prom.wait_for('up{job="prometheus"} == 1')

        rules = {rule["name"]: rule for group in prom.rules() for rule in group["rules"]}
        assert "GeoincidentWorkerDown" in rules
        assert all(rule["health"] != "err" for rule in rules.values()), rules
        pid = prom.pid

    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_test_config_keeps_the_shipped_job_and_points_it_elsewhere() -> None:
    config = retargeted_config(["10.0.0.1:7000"], listen_address="127.0.0.1:9999")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["geoincident"]["static_configs"] == [{"targets": ["10.0.0.1:7000"]}]
    assert jobs["geoincident"]["metrics_path"] == "/metrics"
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:9999"]}]
    assert "alerting" not in config
    assert all(path.startswith("/") for path in config["rule_files"])
