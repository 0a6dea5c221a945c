"""Dispatcher actions across a kill -9 of `geoincident worker` (real Tansu broker).

A burst of `assign` actions, each naming its own crew, is sent to incidents the worker opened;
the worker is killed with SIGKILL in the middle of the burst and started again. Every action
must take effect exactly once: its crew appears at exactly one version of its incident, and
each incident ends at its opening version plus the number of its actions. Outputs may repeat
after a crash (at least once), but never with a new version for an action already applied.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

import orjson
import pytest

from geoincident.geo import destination
from tests.integration.workers import (
    Tail,
    WorkerProcess,
    create_topics,
    planted_clusters,
    produce,
    topic_names,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLACES = 4
ACTIONS = 1200


def _crews(incidents: Tail) -> set[str]:
    return {v["assigned_to"] for v in list(incidents.values) if v.get("assigned_to")}


def _reports(now_ms: int) -> list[bytes]:
    """Five reporters at each of PLACES places ten minutes ago, then one report now far away,
    which moves event time past them: PLACES incidents open."""
    places = [
        ("pothole", *destination(47.6062, -122.3321, 90.0 * place, 3000.0))
        for place in range(PLACES)
    ]
    return planted_clusters(now_ms, places, ago_ms=10 * 60_000, step_ms=30_000, spread_m=30.0)


def _actions(incident_ids: list[str]) -> list[bytes]:
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [
        orjson.dumps(
            {
                "action_id": f"act-{k}",
                "incident_id": incident_ids[k % len(incident_ids)],
                "action": "assign",
                "to": f"crew-{k}",
                "by": "dispatcher-1",
                "at": at,
            }
        )
        for k in range(ACTIONS)
    ]


def test_every_action_takes_effect_once_across_a_kill_9_mid_burst(bootstrap, topic_name, tmp_path):
    names = topic_names(topic_name, 1)
    create_topics(bootstrap, names)
    worker = WorkerProcess(bootstrap, names, tmp_path)
    try:
        with Tail(bootstrap, names["incidents"]) as incidents:
            worker.start()
            now_ms = time.time_ns() // 1_000_000
            produce(bootstrap, names["reports"], _reports(now_ms))
            worker.wait_until(
                lambda: sum(v["event"] == "opened" for v in incidents.values) == PLACES
            )
            opened = {
                v["incident_id"]: v["version"] for v in incidents.values if v["event"] == "opened"
            }

            produce(bootstrap, names["actions"], _actions(sorted(opened)))
            worker.wait_until(lambda: len(_crews(incidents)) >= ACTIONS // 5, timeout_s=60)
            worker.kill(signal.SIGKILL)
            applied_at_kill = len(_crews(incidents))
            assert applied_at_kill < ACTIONS, "the burst ended before the kill: not mid-burst"

            worker.start()
            worker.wait_until(lambda: len(_crews(incidents)) == ACTIONS, timeout_s=120)
            time.sleep(3)  # anything a second application would produce has arrived by now
            seen = list(incidents.values)
    finally:
        worker.stop()

    updates = [v for v in seen if v["event"] == "updated" and v.get("assigned_to")]
    versions_of_crew: dict[str, set[int]] = {}
    for v in updates:
        versions_of_crew.setdefault(v["assigned_to"], set()).add(v["version"])
    twice = {crew: vs for crew, vs in versions_of_crew.items() if len(vs) != 1}
    assert not twice, f"actions applied more than once: {sorted(twice.items())[:5]}"
    assert len(versions_of_crew) == ACTIONS
    for incident_id, first_version in opened.items():
        mine = [v for v in seen if v["incident_id"] == incident_id]
        assert max(v["version"] for v in mine) == first_version + ACTIONS // PLACES, incident_id
    log = worker.tail(100_000)
    assert "event=checkpoint_restored" in log
    assert applied_at_kill > 0
