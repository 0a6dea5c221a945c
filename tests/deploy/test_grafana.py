"""The Grafana dashboard and its provisioning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ruamel.yaml import YAML

from tests.deploy.promql import metric_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "geoincident.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "geoincident.yml"
COMPOSE = ROOT / "docker-compose.yml"


def yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return orjson.loads(DASHBOARD.read_bytes())


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield from (panel.get("panels") or []) if panel["type"] == "row" else [panel]


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in query_panels(dashboard) for t in panel["targets"]]


def test_the_datasource_has_a_fixed_uid_and_points_at_compose_prometheus() -> None:
    (datasource,) = yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"]
    assert datasource["url"] == "http://prometheus:9090"


def test_every_panel_and_query_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    uid = yaml(DATASOURCES)["datasources"][0]["uid"]
    panels = list(query_panels(dashboard))
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == uid, variable["name"]


def test_dashboard_queries_only_use_metrics_the_worker_exports(
    dashboard: dict[str, Any], exported_metric_names: frozenset[str]
) -> None:
    used = {name for expr in exprs(dashboard) for name in metric_names(expr)}
    assert used <= exported_metric_names, f"unknown metrics: {used - exported_metric_names}"


def test_the_dashboard_covers_what_an_operator_needs(dashboard: dict[str, Any]) -> None:
    used = {name for expr in exprs(dashboard) for name in metric_names(expr)}
    assert {
        "geoincident_reports_total",
        "geoincident_reports_rejected_total",
        "geoincident_incidents_total",
        "geoincident_open_incidents",
        "geoincident_detection_latency_seconds_bucket",
        "geoincident_consumer_lag",
        "geoincident_event_time_lag_seconds",
        "geoincident_active_cells",
        "geoincident_state_reports",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    } <= used
    kinds = {panel["type"] for panel in query_panels(dashboard)}
    assert {"timeseries", "heatmap", "stat"} <= kinds
    heatmap = next(p for p in query_panels(dashboard) if p["type"] == "heatmap")
    assert heatmap["targets"][0]["format"] == "heatmap"


def test_panel_ids_are_unique_and_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine


def test_compose_mounts_the_dashboards_where_the_provider_reads_them() -> None:
    (provider,) = yaml(PROVIDERS)["providers"]
    grafana = yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
