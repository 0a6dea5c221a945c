"""docker-compose.yml and deploy/Dockerfile, checked without a Docker engine."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return YAML(typ="safe").load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


def test_compose_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "kafka",
        "topic-init",
        "worker",
        "simulator",
        "prometheus",
        "alertmanager",
        "grafana",
    }


def test_kafka_runs_in_kraft_mode_on_the_official_image(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in (
        "KAFKA_NODE_ID",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
    ):
        assert env.get(key), key
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_worker_and_simulator_talk_to_compose_kafka(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker, simulator = services["worker"], services["simulator"]
    assert worker["command"][:3] == ["worker", "--brokers", "kafka:9092"]
    assert simulator["command"][:4] == ["simulate", "--live", "--brokers", "kafka:9092"]
    for service in (worker, simulator):
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    assert "6066:6066" in worker["ports"]


def test_prometheus_gets_the_shipped_config_and_rules(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["prometheus"]["volumes"]
    assert any(v.startswith("./deploy/prometheus/prometheus.yml:") for v in volumes)
    assert any(v.startswith("./deploy/prometheus/rules:/etc/prometheus/rules") for v in volumes)
    alertmanager = compose["services"]["alertmanager"]["volumes"]
    assert any(v.startswith("./deploy/alertmanager/alertmanager.yml:") for v in alertmanager)


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_hadolint_accepts_the_dockerfile(hadolint: str) -> None:
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_the_worker_as_a_non_root_user_with_a_health_check() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    (user,) = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user.split(":")[0] not in {"root", "0"}
    (healthcheck,) = re.findall(r"^HEALTHCHECK\b(?:.*\\\n)*.*$", text, re.M)
    assert "/health" in healthcheck and "6066" in healthcheck
    assert 'ENTRYPOINT ["geoincident"]' in text
    assert 'CMD ["worker"]' in text


def test_image_copies_every_package_the_project_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY\s+(\S+?)/?\s+\S+$", DOCKERFILE.read_text(), re.M))
    assert package_dirs <= copied, f"not copied into the image: {package_dirs - copied}"


def _image_environment() -> dict[str, str]:
    """GEOINCIDENT_* variables the image and the compose services set."""
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", DOCKERFILE.read_text(), re.M):
        env.update(re.findall(r"(GEOINCIDENT_\w+)=(\S+)", block))
    return env


def test_the_images_configuration_variables_are_ones_the_worker_accepts(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoincident.stream.config import load_settings

    env = _image_environment()
    assert env, "the image sets no GEOINCIDENT_* variable"
    for service in compose["services"].values():
        environment = service.get("environment") or {}
        env.update({k: str(v) for k, v in environment.items() if k.startswith("GEOINCIDENT_")})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # An unknown or misspelt variable stops the worker at start; here it fails the test.
    load_settings()
