"""simulate -> geoincident replay -> evaluate, through the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

GEOINCIDENT = Path(sys.executable).parent / "geoincident"


@pytest.fixture
def replay_available() -> None:
    probe = (
        subprocess.run(
            [str(GEOINCIDENT), "replay", "--help"], capture_output=True, check=False, timeout=60
        )
        if GEOINCIDENT.exists()
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("`geoincident replay` is not available yet")


@pytest.mark.slow
@pytest.mark.usefixtures("replay_available")
def test_the_detector_finds_every_planted_incident_and_no_decoy_on_a_small_city(tmp_path):
    reports = tmp_path / "reports.jsonl"
    truth = tmp_path / "reports.truth.json"
    incidents = tmp_path / "incidents.jsonl"

    def run(*args: str) -> subprocess.CompletedProcess:
        completed = subprocess.run(
            [str(GEOINCIDENT), *args], capture_output=True, check=False, timeout=120
        )
        assert completed.returncode == 0, completed.stderr.decode()
        return completed

    run("simulate", "--seed", "11", "--hours", "2", "-o", str(reports))
    run("replay", str(reports), "-o", str(incidents))
    result = orjson.loads(
        run("evaluate", "--incidents", str(incidents), "--truth", str(truth), "--json").stdout
    )
    assert result["recall"] == 1.0, result["missed_truths"]
    assert result["decoy_hits"] == 0, result["decoy_truths_hit"]
    assert result["splits"] == 0, result["split_truths"]
