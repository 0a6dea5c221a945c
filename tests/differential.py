"""The worker's core driven through a scenario, for the compiled-versus-Python tests
(tests/test_compiled.py).

`run(scenario)` feeds a scenario (batches of report lines, dispatcher actions, restarts from a
checkpoint) to the core as the worker and `geoincident replay` drive it (stream/runtime.py,
one partition, no wall clock) and returns everything it produced, as plain data. The tests run
it in their own process, whose core is compiled, and in a child started with
GEOINCIDENT_PURE_PYTHON=1, `python -m tests.differential`, which answers one scenario per line
of its standard input with its result on a line of standard output.

A scenario is JSON: {"profile": a key of PROFILES, "steps": [...]}, each step one of
["reports", [line, ...]] (a batch; lines as latin-1 text, so any bytes fit),
["action", {...}] (see `_action_value`) and ["restart"]. A routing scenario,
{"regions": [resolution, cell resolution, halo_m, partitions], "points": [[lat, lon], ...]},
asks scale-out's routing (geo/regions.py) where each point goes: `route` and `targets`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import geoincident.detectors.engine
from geoincident import compiled
from geoincident.detectors import DetectorParams
from geoincident.detectors.bursts import BurstParams
from geoincident.detectors.params import CategoryParams
from geoincident.detectors.surge import SurgeParams
from geoincident.geo.regions import RegionMap
from geoincident.stream.checkpoint import decode, encode
from geoincident.stream.replay import replay_core
from geoincident.stream.runtime import Outputs, WorkerCore

# Settings as the configuration would give them (floats where the keys are floats).
PROFILES = {
    "default": lambda: DetectorParams(),
    # everything happens sooner and more often: three voices open an incident, updates are
    # not throttled, quiet incidents resolve within the stream, surges and bursts come easily
    "eager": lambda: DetectorParams(
        defaults=CategoryParams(threshold=3.0, resolve_after_s=900.0, update_interval_s=0.0),
        source_weights={"staff": 5.0, "web": 0.5},
        retain_resolved_s=1800.0,
        surge=SurgeParams(
            min_count=24,
            min_ratio=4.0,
            min_independent=6,
            warmup_s=600.0,
            resolve_after_s=600.0,
            cooldown_s=600.0,
            update_interval_s=0.0,
        ),
        bursts=BurstParams(min_reporters=6, min_devices=6, cooldown_s=300.0),
    ),
}


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def _bytes(text: str) -> bytes:
    return text.encode("latin-1")


class _Run:
    def __init__(self, params: DetectorParams) -> None:
        self.params = params
        self.core: WorkerCore = replay_core(params, "reports")  # type: ignore[assignment]
        self.lines: list[bytes] = []  # every report line fed, its offset its index
        self.action_offset = 0
        self.incident_ids: list[str] = []  # in the order they first appeared
        self.members: dict[str, tuple[str, ...]] = {}  # incident id -> its last report ids
        self.result: dict[str, Any] = {
            "events": [],
            "dlq": [],
            "action_dlq": [],
            "outcomes": [],
            "bursts": [],
            "checkpoints": [],
        }

    def take(self, out: Outputs) -> None:
        result = self.result
        for event in out.incidents:
            result["events"].append(_text(event.to_json()))
            if event.incident_id not in self.members:
                self.incident_ids.append(event.incident_id)
            self.members[event.incident_id] = event.report_ids
        result["dlq"] += [_text(record) for record in out.dlq]
        result["action_dlq"] += [_text(record) for record in out.action_dlq]
        result["outcomes"].append(sorted(out.outcomes.items()))
        result["bursts"] += [burst.log_fields() for burst in self.core.take_bursts()]

    def reports(self, lines: list[str]) -> None:
        start = len(self.lines)
        batch = [(start + n, _bytes(text), 0) for n, text in enumerate(lines)]
        self.lines += [raw for _, raw, _ in batch]
        self.take(self.core.on_reports(0, batch, None))

    def action(self, spec: dict[str, Any]) -> None:
        value = _action_value(spec, self.incident_ids, self.members)
        self.take(self.core.on_action(value, 0, self.action_offset, None))
        self.action_offset += 1

    def restart(self) -> None:
        """A new process from this one's checkpoint (through its bytes), its windows rebuilt
        from the lines a worker reads again (from the partition's rebuild offset)."""
        blob = encode(self.core.checkpoint())
        self.result["checkpoints"].append(blob.hex())
        checkpoint = decode(blob)
        saved = checkpoint["partitions"].get(0)
        reread = self.lines[saved["rebuild_offset"] :] if saved is not None else []
        self.core = replay_core(self.params, "reports")  # type: ignore[assignment]
        self.core.restore(checkpoint, 0)
        self.core.rebuild(reread)

    def finish(self) -> dict[str, Any]:
        self.take(self.core.flush())
        self.result["checkpoints"].append(encode(self.core.checkpoint()).hex())
        self.result["totals"] = sorted(self.core.totals.items())
        return self.result


def _action_value(
    spec: dict[str, Any], incident_ids: list[str], members: dict[str, tuple[str, ...]]
) -> bytes:
    """An action on the `spec["incident"]`-th incident seen so far (modulo their number; an
    unknown id while there is none), a member of it for flag_report: found at run time, so
    the same scenario acts on the same incidents in both runs (as long as they agree)."""
    incident_id = "inc-0000000000000000"
    report_id = "no-such-report"
    if incident_ids:
        incident_id = incident_ids[spec["incident"] % len(incident_ids)]
        ids = members[incident_id]
        if ids:
            report_id = ids[spec["member"] % len(ids)]
    body: dict[str, Any] = {"action": spec["action"], "by": "disp-1"}
    if spec["action"] != "block":
        body["incident_id"] = incident_id
    if spec["action"] == "assign":
        body["to"] = "crew-7"
    if spec["action"] == "flag_report":
        body["report_id"] = report_id
    if spec["action"] == "block":
        body["reporter"] = spec["reporter"]
    if spec.get("at") is not None:
        body["at"] = spec["at"]
    return json.dumps(body).encode()


def run(scenario: dict[str, Any]) -> dict[str, Any]:
    """What the core produced; an exception that escapes it ends the run and is part of the
    result (`error`): the compiled core must fail where and as the sources do."""
    driven = _Run(PROFILES[scenario["profile"]]())
    try:
        for step in scenario["steps"]:
            if step[0] == "reports":
                driven.reports(step[1])
            elif step[0] == "action":
                driven.action(step[1])
            elif step[0] == "restart":
                driven.restart()
            else:
                raise ValueError(f"unknown step {step[0]!r}")
        result = driven.finish()
    except Exception as error:  # noqa: BLE001 - compared, not hidden
        result = driven.result
        result["error"] = f"{type(error).__name__}: {error}"
    return result


def route(scenario: dict[str, Any]) -> dict[str, Any]:
    """Each point's owning region and halo regions, and their partitions."""
    resolution, cell_resolution, halo_m, partitions = scenario["regions"]
    regions = RegionMap(resolution, cell_resolution, float(halo_m), partitions)
    routes = []
    for lat, lon in scenario["points"]:
        region, halo = regions.route(lat, lon)
        owner, others = regions.targets(lat, lon)
        routes.append([region, halo, owner, others])
    return {"routes": routes}


def mode() -> dict[str, Any]:
    """How this process runs the core: the switch's verdict and where the engine came from."""
    return {"compiled": compiled.COMPILED, "engine": geoincident.detectors.engine.__file__}


def main() -> None:
    out = sys.stdout
    for request in sys.stdin:
        scenario = json.loads(request)
        if scenario == "mode":
            answer = mode()
        elif "regions" in scenario:
            answer = route(scenario)
        else:
            answer = run(scenario)
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
