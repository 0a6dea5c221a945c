"""The running worker as engineers see it: its /metrics scraped by a real Prometheus with the
shipped config, and every metric the dashboard and alert rules query really exported."""

import subprocess
import sys

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.prom import PrometheusServer
from tests.deploy.test_grafana import DASHBOARD, exprs
from tests.deploy.test_prometheus import alerts
from tests.integration.workers import WorkerProcess, create_topics, produce, topic_names

pytestmark = pytest.mark.slow


@pytest.fixture
def running_worker(bootstrap, topic_name, tmp_path):
    stream = tmp_path / "reports.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "geoincident.stream.cli",
            "simulate",
            "--seed",
            "9",
            "--hours",
            "2",
            "-o",
            str(stream),
        ],
        check=True,
        capture_output=True,
    )
    lines = stream.read_bytes().splitlines()
    names = topic_names(topic_name)
    create_topics(bootstrap, names)
    worker = WorkerProcess(bootstrap, names, tmp_path).start()
    worker.wait_until(lambda: worker.get("/ready")[0] == 200)
    yield worker, lines
    worker.stop()


def test_prometheus_scrapes_the_worker_and_sees_reports_and_incidents_rise(
    bootstrap, running_worker
):
    worker, lines = running_worker
    with PrometheusServer([f"127.0.0.1:{worker.web_port}"]) as prometheus:
        prometheus.wait_for('up{job="geoincident"} == 1')
        assert prometheus.query_value("sum(geoincident_reports_total)") == 0
        produce(bootstrap, worker.names["reports"], lines)
        worker.wait_until(lambda: worker.processed() == len(lines))
        prometheus.wait_for(f"sum(geoincident_reports_total) >= {len(lines)}")
        prometheus.wait_for('sum(geoincident_incidents_total{event="opened"}) > 0')
        accepted = prometheus.query_value('geoincident_reports_total{outcome="accepted"}')
        assert accepted == worker.totals()["accepted"]


def test_every_metric_the_dashboard_and_the_alerts_query_is_exported(running_worker):
    from tests.deploy.promql import metric_names

    worker, _ = running_worker
    worker.wait_until(lambda: "geoincident_consumer_lag{" in worker.text("/metrics"))
    exported = {
        sample.name
        for family in text_string_to_metric_families(worker.text("/metrics"))
        for sample in family.samples
    } | {"up"}  # `up` is Prometheus' own
    queried = set()
    for expr in exprs(orjson.loads(DASHBOARD.read_bytes())):
        queried |= metric_names(expr)
    for rule in alerts():
        queried |= metric_names(rule["expr"])
    assert queried and queried <= exported, sorted(queried - exported)
