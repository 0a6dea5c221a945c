"""Memory per report held in the detector's window.

    python benchmarks/memory.py [--small 50000] [--large 350000] [--repeat 2]

Makes two streams of reports scattered over the contiguous US (so none of them agree: each is
a free report held for its window), all inside one 15-minute window of event time, and
replays each with `geoincident replay` as a separate process. The peak RSS difference over
the difference in reports is what a report held in the window costs. Reporters and devices
are drawn from pools 4x the large stream, so most reports come from a reporter new to the
detector, as in a national deployment. Prints a table and writes it to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import timed, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
START_MS = int(datetime(2026, 11, 24, tzinfo=UTC).timestamp() * 1000)
WINDOW_SPAN_MS = 10 * 60_000  # every report inside the 15-minute window
CORE_BUILD = (
    "import geoincident.detectors.grouping as m; "
    "print('compiled' if m.__file__.endswith('.so') else 'pure Python')"
)
TAGS = ["#lightout", "#pothole", "#signalout", "#flooding", "#treedown", "#watermain"]


def make_stream(path: Path, count: int, pool: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as out:
        for n in range(count):
            body = {
                "id": f"m{n}",
                "ts": START_MS + (n * WINDOW_SPAN_MS) // count,
                "lat": round(rng.uniform(25, 49), 6),
                "lon": round(rng.uniform(-124, -67), 6),
                "reporter": f"u{rng.randrange(pool)}",
                "device": f"d{rng.randrange(pool)}",
                "source": "app",
                "accuracy_m": round(rng.uniform(3, 60), 1),
                "tags": [TAGS[n % len(TAGS)]],
                "text": "please send someone",
            }
            out.write(orjson.dumps(body) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=50_000)
    parser.add_argument("--large", type=int, default=350_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    geoincident = str(Path(sys.executable).parent / "geoincident")
    pool = 4 * args.large
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for count in (args.small, args.large):
            stream = work / f"{count}.jsonl"
            make_stream(stream, count, pool)
            peak = best = float("inf")
            for _ in range(args.repeat):
                elapsed, rss = timed([geoincident, "replay", str(stream), "-o", os.devnull])
                peak = min(peak, rss)
                best = min(best, elapsed)
            rows[count] = (peak, best)
    (small_rss, _), (large_rss, _) = rows[args.small], rows[args.large]
    per_report = (large_rss - small_rss) / (args.large - args.small)
    compiled = subprocess.run(
        [sys.executable, "-c", CORE_BUILD],
        capture_output=True,
        text=True,
    ).stdout.strip()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        "## Memory per report in the window",
        "",
        f"`python benchmarks/memory.py` ({datetime.now(UTC):%Y-%m-%d}, {machine}; "
        f"core: {compiled or 'unknown'}).",
        "",
        "Two streams of reports scattered over the contiguous US, all within "
        f"{WINDOW_SPAN_MS // 60_000} "
        "minutes of event time (one window: every report is held until the end), reporters "
        f"and devices drawn from pools of {pool:,}; each replayed by `geoincident replay` as a "
        f"separate process, lowest peak RSS of {args.repeat}.",
        "",
        "| reports in the window | peak RSS | replay time |",
        "|---:|---:|---:|",
    ]
    for count, (rss, elapsed) in rows.items():
        lines.append(f"| {count:,} | {rss / 2**20:,.0f} MiB | {elapsed:.1f} s |")
    lines += [
        "",
        f"**{per_report:,.0f} bytes per report held** "
        f"(({large_rss / 2**20:,.0f} - {small_rss / 2**20:,.0f}) MiB / "
        f"{args.large - args.small:,} reports; target <= 300 bytes).",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    write_section(args.output, "## Memory per report in the window", section)


if __name__ == "__main__":
    main()
