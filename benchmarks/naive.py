"""Throughput of the naive baseline's bare loop (orjson + h3 res 9 + dict of reporter sets).

    python benchmarks/naive.py [REPORTS.jsonl] [--rate 2000] [--hours 6] [--repeat 3]

Without a file it simulates a busy city (``--rate`` background reports per hour per category).
Prints one JSON object. ``measure(lines)`` is what the replay benchmark imports to put the naive
loop beside the detector on the same lines.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from geoincident.sim.naive import naive_loop
from geoincident.sim.simulate import SimParams, report_to_json, simulate


def busy_city_lines(seed: int = 1, hours: float = 6.0, rate_per_h: float = 2000.0) -> list[bytes]:
    sim = simulate(SimParams(seed=seed, hours=hours, background_per_hour=rate_per_h))
    return [orjson.dumps(report_to_json(report)) for report in sim.reports]


def measure(lines: Sequence[bytes], repeat: int = 3) -> dict:
    """Best of ``repeat`` runs of the bare loop over ``lines`` (already in memory)."""
    best_s = float("inf")
    opened = 0
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        opened = naive_loop(lines)
        best_s = min(best_s, time.perf_counter() - started)
    return {
        "pipeline": "naive",
        "reports": len(lines),
        "opened": opened,
        "seconds": round(best_s, 4),
        "reports_per_s": round(len(lines) / best_s) if best_s > 0 else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", type=Path, help="reports JSONL (default: simulate)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.input is not None:
        lines = args.input.read_bytes().splitlines()
    else:
        lines = busy_city_lines(args.seed, args.hours, args.rate)
    print(orjson.dumps(measure(lines, args.repeat)).decode())


if __name__ == "__main__":
    main()
