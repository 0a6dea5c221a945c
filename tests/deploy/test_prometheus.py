"""Prometheus config, alert rules and their promtool unit tests, and the Alertmanager example."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.deploy.promql import metric_names

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "geoincident.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "geoincident_test.yml"
ALERTMANAGER = PROMETHEUS_DIR.parent / "alertmanager" / "alertmanager.yml"
OPERATIONS = PROMETHEUS_DIR.parents[1] / "docs" / "operations.md"


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_promtool_accepts_the_config(promtool: str) -> None:
    result = run(promtool, "check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # The config's rule_files glob must find the rules, not silently match nothing.
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_fires_in_a_unit_test_and_stays_quiet_when_healthy() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    healthy = next(case for case in load(RULE_TESTS)["tests"] if "healthy" in case["name"])
    healthy_quiet = {check["alertname"] for check in healthy["alert_rule_test"]}
    names = {rule["alert"] for rule in alerts()}
    assert names == fires, f"alerts never shown to fire: {names - fires}"
    unchecked = names - healthy_quiet
    assert not unchecked, f"alerts not checked on the healthy hour: {unchecked}"


def test_every_alert_explains_itself_and_links_an_existing_runbook_section() -> None:
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alerts():
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, rule["alert"]
        url = annotations.get("runbook_url", "")
        page, _, anchor = url.partition("#")
        assert page == "docs/operations.md", f"{rule['alert']}: {url}"
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/operations.md"


def test_rules_only_use_metrics_the_worker_exports(exported_metric_names: frozenset[str]) -> None:
    used = {name for rule in alerts() for name in metric_names(rule["expr"])}
    assert used, "no metric names found: the PromQL reader is broken"
    assert used <= exported_metric_names, f"unknown metrics: {used - exported_metric_names}"


def test_the_config_scrapes_the_workers_metrics_endpoint_on_its_web_port() -> None:
    config = load(CONFIG)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "geoincident"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets and all(t.endswith(":6066") for t in targets)
    assert config["alerting"]["alertmanagers"]


def test_the_alert_rules_are_those_of_the_job_the_config_scrapes() -> None:
    selectors = {m for rule in alerts() for m in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert selectors == {"geoincident"}


def test_amtool_accepts_the_alertmanager_example(amtool: str) -> None:
    result = run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [("GeoincidentWorkerDown", "geoincidentworkerdown"), ("The stack", "the-stack")],
)
def test_github_anchor(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor
