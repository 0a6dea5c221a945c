"""Replay throughput: `geoincident replay` end to end against the naive afternoon baseline.

    python benchmarks/replay.py [--reports 1000000] [--repeat 3] [--density-rates 300 1000 2770]

Makes a stream of N reports over a continent-sized box (so coincidences stay rare, as in a
national deployment) with a few planted incidents, then times, in the same run and on the same
file, each pipeline as a separate process (file in, file out), best of --repeat runs, with the
peak RSS of each process. Prints a table and writes it to docs/benchmarks.md.

Then the same by density: simulated 6-hour city streams (`geoincident simulate`, ~400 km²,
eight categories, planted incidents) at several background rates, replayed the same way, so
the cost per report can be read against how busy the city is.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = [
    ("streetlight_out", "#lightout", "the street light is out"),
    ("pothole", "#pothole", "big pothole in the lane"),
    ("traffic_signal_out", "#signalout", "traffic light dark at the junction"),
    ("road_flooding", "#flooding", "road flooded under the bridge"),
    ("downed_tree", "#treedown", "tree down across the road"),
    ("water_main_break", "#watermain", "water main gushing"),
]
START_MS = int(datetime(2026, 11, 24, tzinfo=UTC).timestamp() * 1000)


def make_stream(path: Path, count: int, seed: int = 1) -> None:
    """Reports over the contiguous US box across 24 h of event time, in arrival order."""
    rng = random.Random(seed)
    span_ms = 24 * 3600 * 1000
    lines = []
    planted = 0
    n = 0
    while n < count:
        ts_ms = START_MS + (n * span_ms) // count
        if n % 5000 == 0:  # a planted incident: 6 reporters within ~40 m and 3 minutes
            lat, lon = rng.uniform(25, 49), rng.uniform(-124, -67)
            category, tag, _ = rng.choice(CATEGORIES)
            for k in range(6):
                lines.append(
                    orjson.dumps(
                        {
                            "id": f"p{planted}-{k}",
                            "ts": ts_ms + k * 30_000,
                            "lat": lat + rng.uniform(-3e-4, 3e-4),
                            "lon": lon + rng.uniform(-3e-4, 3e-4),
                            "reporter": f"planted-{planted}-{k}",
                            "tags": [tag],
                            "source": "app",
                            "accuracy_m": 8.0,
                        }
                    )
                )
            planted += 1
            n += 6
            continue
        category, tag, text = CATEGORIES[n % len(CATEGORIES)]
        moment = datetime.fromtimestamp(ts_ms / 1000, UTC)
        style = n % 3
        body = {
            "id": f"r{n}",
            "ts": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "lat": round(rng.uniform(25, 49), 6),
            "lon": round(rng.uniform(-124, -67), 6),
            "reporter": f"u{rng.randrange(2_000_000)}",
            "source": "app" if n % 4 else "web",
            "device": f"d{rng.randrange(3_000_000)}",
            "accuracy_m": round(rng.uniform(3, 60), 1),
            "lang": "en-US",
        }
        if style == 0:
            body["tags"] = [tag, "#city"]
        elif style == 1:
            body["category"] = category
        body["text"] = f"{text} near block {n % 997}, please send someone"
        lines.append(orjson.dumps(body))
        n += 1
    path.write_bytes(b"\n".join(lines[:count]) + b"\n")


NAIVE = r"""
import sys, orjson, h3
from datetime import datetime
out = open(sys.argv[2], "wb")
buckets = {}
for line in open(sys.argv[1], "rb"):
    r = orjson.loads(line)
    ts = r["ts"]
    ts_ms = ts if isinstance(ts, int) else int(datetime.fromisoformat(ts).timestamp() * 1000)
    category = r.get("category") or (r.get("tags") or [""])[0].lower().lstrip("#")
    key = (h3.latlng_to_cell(r["lat"], r["lon"], 9), category, ts_ms // 900_000)
    reporters = buckets.get(key)
    if reporters is None:
        reporters = buckets[key] = set()
    reporters.add(r["reporter"])
    if len(reporters) == 5:
        out.write(orjson.dumps({"event": "opened", "cell": key[0], "category": category}) + b"\n")
out.close()
"""


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{command[:3]} failed: {process.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss * 1024


def count_lines(path: Path, needle: bytes = b"") -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if needle in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--density-rates",
        type=float,
        nargs="*",
        default=[300.0, 1000.0, 2770.0],
        help="background reports per minute of the density rows (none: skip them)",
    )
    parser.add_argument("--density-hours", type=float, default=6.0)
    parser.add_argument("--make-stream", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_stream:
        make_stream(Path(args.make_stream), args.reports)
        return
    python = sys.executable
    geoincident = str(Path(python).parent / "geoincident")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stream = work / "reports.jsonl"
        print(f"making {args.reports:,} reports ...", file=sys.stderr)
        # In a child process: a forked child's peak RSS counts the parent's pages it was forked
        # with, so the parent must stay small for the RSS column to mean anything.
        subprocess.run(
            [python, __file__, "--make-stream", str(stream), "--reports", str(args.reports)],
            check=True,
        )
        size_mb = stream.stat().st_size / 1e6
        naive_script = work / "naive.py"
        naive_script.write_text(NAIVE)
        pipelines = {
            "naive baseline (orjson + h3 res 9 + dict of sets)": [
                python,
                str(naive_script),
                str(stream),
                str(work / "naive.jsonl"),
            ],
            "geoincident replay (full semantics, file to file)": [
                geoincident,
                "replay",
                str(stream),
                "-o",
                str(work / "ours.jsonl"),
            ],
        }
        results = {}
        for name in pipelines:
            results[name] = (float("inf"), 0)
        for _ in range(args.repeat):
            for name, command in pipelines.items():  # interleaved, so drift hits both alike
                seconds, rss = timed(command)
                best, peak = results[name]
                results[name] = (min(best, seconds), max(peak, rss))
        opened_ours = count_lines(work / "ours.jsonl", b'"event":"opened"')
        opened_naive = count_lines(work / "naive.jsonl")
    rows = []
    naive_rate = args.reports / results[next(iter(pipelines))][0]
    for name, (seconds, rss) in results.items():
        rate = args.reports / seconds
        rows.append((name, rate, rate / naive_rate, rss))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        "| pipeline | reports/s | vs naive | peak RSS |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {rate:,.0f} | {ratio:.2f}x | {rss / 2**20:,.0f} MiB |"
            for name, rate, ratio, rss in rows
        ),
    ]
    table = "\n".join(lines)
    print(table)
    print(f"opened: ours {opened_ours:,}, naive {opened_naive:,}", file=sys.stderr)
    section = (
        f"## Replay throughput\n\n"
        f"`python benchmarks/replay.py --reports {args.reports}` "
        f"({datetime.now(UTC).date()}, {machine}; {args.reports:,} reports, {size_mb:,.0f} MB, "
        f"best of {args.repeat}, each pipeline a separate process timed from start to exit).\n\n"
        f"{table}\n\n"
        f"Incidents opened on this stream: geoincident {opened_ours:,}; the naive baseline "
        f"{opened_naive:,} (it also has no DLQ, no lateness, no independence by device, and "
        f"splits incidents on cell and window edges).\n"
    )
    write_section(Path(args.output), "## Replay throughput", section)
    if args.density_rates:
        density = density_section(args, geoincident, machine)
        write_section(Path(args.output), "## Replay throughput by density", density)


def density_section(args: argparse.Namespace, geoincident: str, machine: str) -> str:
    """Replay throughput on simulated city streams of rising background density."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for per_min in args.density_rates:
            stream = work / f"city-{per_min:g}.jsonl"
            print(f"simulating {per_min:g} background reports/min ...", file=sys.stderr)
            subprocess.run(
                [
                    geoincident,
                    "simulate",
                    "--seed",
                    "31",
                    "--hours",
                    str(args.density_hours),
                    # --rate is per category and hour; the simulator has eight categories
                    "--rate",
                    str(per_min * 60 / 8),
                    "-o",
                    str(stream),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            reports = count_lines(stream)
            command = [geoincident, "replay", str(stream), "-o", str(work / "out.jsonl")]
            best, peak = float("inf"), 0
            for _ in range(args.repeat):
                seconds, rss = timed(command)
                best, peak = min(best, seconds), max(peak, rss)
            opened = count_lines(work / "out.jsonl", b'"event":"opened","version":1,"kind":"local"')
            rows.append((per_min, reports, reports / best, peak, opened))
    base = rows[0][2]
    lines = [
        "| background reports/min | reports | reports/s | vs the first row | peak RSS "
        "| local incidents opened |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {per_min:,.0f} | {reports:,} | {rate:,.0f} | {rate / base:.2f}x "
            f"| {rss / 2**20:,.0f} MiB | {opened:,} |"
            for per_min, reports, rate, rss, opened in rows
        ),
    ]
    table = "\n".join(lines)
    print(table)
    return (
        "## Replay throughput by density\n\n"
        f"`python benchmarks/replay.py --density-rates "
        f"{' '.join(f'{r:g}' for r in args.density_rates)}` ({datetime.now(UTC).date()}, "
        f"{machine}; `geoincident simulate --seed 31 --hours {args.density_hours:g}` over "
        f"~400 km² with eight categories, best of {args.repeat}, each replay a separate "
        "process timed from start to exit, so start-up is included).\n\n"
        f"{table}\n\n"
        "A busier city costs more per report only through the local density (reports near each "
        "other to compare): groups never chain across a busy area (design.md, Agreement). "
        "Detection quality on these densities is in quality.md.\n"
    )


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace one `## ` section of the benchmarks page, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find(heading + "\n")  # the whole heading line, not one it begins
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        rest = text[end + 1 :] if end != -1 else ""
        # a blank line before the next heading, however the section ends
        text = text[:start] + (section.rstrip("\n") + "\n\n" if rest else section) + rest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
