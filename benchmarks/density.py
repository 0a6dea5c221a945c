"""Detection quality in busy cities: simulate -> geoincident replay -> evaluate at city-scale
background rates, beside the naive baseline on the same streams. Writes the density section of
docs/quality.md and the raw numbers to docs/density.json.

    python benchmarks/density.py [--rates 300 1000 2770] [--seeds 11 12] [--hours 6]

Streams, each for every seed: uniform background at each of ``--rates`` reports/min over the
~20 x 20 km city; ``hotspot`` (300/min, a downtown disk at 5x and a nightlife street at 10x, with
the daily cycle, from 16:00 UTC); ``outbreak`` (300/min and ``power_outage:5000:10`` over a
2.5 km district). Every stream carries the default planted families that fit in ``--hours``.

Runs are sequential: the replay is timed (wall clock of the whole process, start-up included),
and on a small machine a second run beside it would slow it down.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from geoincident.detectors import DetectorParams
from geoincident.detectors.significance import judge
from geoincident.sim.common import geoincident_bin, parse_ts_ms, read_jsonl
from geoincident.sim.evaluate import Evaluation, evaluate, load_truth_run
from geoincident.sim.naive import run_naive
from geoincident.sim.simulate import (
    DEFAULT_FAMILY_COUNTS,
    DEFAULT_START_MS,
    Outbreak,
    SimParams,
    parse_hotspots,
    parse_outbreak,
    report_to_json,
    simulate,
    truth_to_json,
)

ROOT = Path(__file__).resolve().parent.parent
# The reference densities of a busy city of ~350-400 km², in reports per minute.
DEFAULT_RATES = (300.0, 1000.0, 2770.0)
DEFAULT_SEEDS = (11, 12)
DEFAULT_HOURS = 6.0
HOTSPOT_RATE_PER_MIN = 300.0
HOTSPOTS = "downtown,nightlife"
# The daily cycle runs on the UTC hours of event time: start where the city is busiest (18:00)
# and the nightlife street is filling up (23:00), not in the small hours of the default start.
HOTSPOT_START = "2026-11-24T16:00:00Z"
OUTBREAK_RATE_PER_MIN = 300.0
OUTBREAK = "power_outage:5000:10"
# Shared with benchmarks/quality.py, which carries this section over when it rewrites the file.
DENSITY_HEADING = "## Density"
DENSITY_BEGIN = "<!-- density:begin -->"
DENSITY_END = "<!-- density:end -->"
# A family needs this many hours of stream to be placed (trickle: 45 min of reports with 10 min
# before and 20 after; surge: the second half of the stream, ending 30 min before its end).
FAMILY_MIN_HOURS = {"trickle": 1.25, "surge": 1.0}


@dataclass(frozen=True, slots=True)
class Stream:
    name: str
    background_per_min: float
    hotspots: str = ""
    daily_cycle: bool = False
    outbreak: str = ""
    start: str | None = None  # RFC 3339; the simulator's default start when None

    def params(self, seed: int, hours: float) -> SimParams:
        outbreak: Outbreak | None = parse_outbreak(self.outbreak) if self.outbreak else None
        start_ms = parse_ts_ms(self.start) if self.start else DEFAULT_START_MS
        return SimParams(
            seed=seed,
            start_ms=start_ms,
            hours=hours,
            families=families_for(hours),
            background_per_min=self.background_per_min,
            hotspots=parse_hotspots(self.hotspots),
            daily_cycle=self.daily_cycle,
            outbreak=outbreak,
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "background_per_min": self.background_per_min,
            "hotspots": self.hotspots or None,
            "daily_cycle": self.daily_cycle,
            "outbreak": self.outbreak or None,
            "start": self.start,
        }


@dataclass(frozen=True, slots=True)
class Run:
    stream: Stream
    seed: int
    hours: float
    reports: int
    replay_s: float
    ours: Evaluation
    naive: Evaluation

    @property
    def reports_per_s(self) -> float:
        return self.reports / self.replay_s if self.replay_s > 0 else float("nan")


def families_for(hours: float) -> dict[str, int]:
    """The default planted mix, less the families a stream this short cannot hold."""
    return {
        family: (0 if hours <= FAMILY_MIN_HOURS.get(family, 0.0) else count)
        for family, count in DEFAULT_FAMILY_COUNTS.items()
    }


def streams_for(rates: Sequence[float]) -> list[Stream]:
    streams = [Stream(f"uniform {rate:g}/min", rate) for rate in rates]
    streams.append(
        Stream(
            "hotspot",
            HOTSPOT_RATE_PER_MIN,
            hotspots=HOTSPOTS,
            daily_cycle=True,
            start=HOTSPOT_START,
        )
    )
    streams.append(Stream("outbreak", OUTBREAK_RATE_PER_MIN, outbreak=OUTBREAK))
    return streams


def run_stream(stream: Stream, seed: int, hours: float, workdir: Path, geoincident: str) -> Run:
    stem = f"{stream.name.replace(' ', '-').replace('/', '-per-')}-{seed}"
    reports_path = workdir / f"reports-{stem}.jsonl"
    truth_path = workdir / f"truth-{stem}.json"
    incidents_path = workdir / f"incidents-{stem}.jsonl"
    sim = simulate(stream.params(seed, hours))
    with reports_path.open("wb") as handle:
        for report in sim.reports:
            handle.write(orjson.dumps(report_to_json(report)) + b"\n")
    truth_path.write_bytes(orjson.dumps(truth_to_json(sim)))
    count = len(sim.reports)
    # A dense stream is a million reports: let them go before the replay needs the memory.
    del sim
    started = time.perf_counter()
    completed = subprocess.run(
        [geoincident, "replay", str(reports_path), "-o", str(incidents_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    replay_s = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"geoincident replay failed on {stream.name}, seed {seed}:\n{completed.stderr}")
    truth = load_truth_run(truth_path)
    ours = evaluate(read_jsonl(incidents_path), truth.items, duration_h=truth.duration_h)
    naive_events = run_naive(reports_path.read_bytes().splitlines())
    naive = evaluate(naive_events, truth.items, duration_h=truth.duration_h)
    return Run(stream, seed, hours, count, replay_s, ours, naive)


# ---------------------------------------------------------------- pooling and the document


@dataclass(frozen=True, slots=True)
class Pooled:
    """One stream over all seeds: counts summed, rates over the summed denominators."""

    stream: Stream
    runs: tuple[Run, ...]

    def _sum(self, attr: str, side: str) -> int:
        return sum(getattr(getattr(r, side), attr) for r in self.runs)

    @property
    def hours(self) -> float:
        return sum(r.hours for r in self.runs)

    @property
    def planted(self) -> int:
        return self._sum("incident_truths", "ours")

    def recall(self, side: str) -> float | None:
        return self._sum("detected", side) / self.planted if self.planted else None

    def chance(self, side: str) -> int:
        return self._sum("chance_incidents", side)

    def chance_per_day(self, side: str) -> float:
        return self.chance(side) * 24 / self.hours

    def decoy_hits(self, side: str) -> int:
        return self._sum("decoy_hits", side)

    @property
    def reports_per_s(self) -> float:
        replay_s = sum(r.replay_s for r in self.runs)
        return sum(r.reports for r in self.runs) / replay_s if replay_s > 0 else float("nan")

    @property
    def outbreaks(self) -> int:
        return sum(len(r.ours.outbreaks) for r in self.runs)

    @property
    def outbreak_surges(self) -> int:
        return sum(r.ours.outbreak_surges or 0 for r in self.runs)

    @property
    def outbreak_local(self) -> int:
        return sum(r.ours.outbreak_local or 0 for r in self.runs)

    @property
    def outbreak_local_linked(self) -> int:
        return sum(r.ours.outbreak_local_linked or 0 for r in self.runs)

    def to_json(self) -> dict:
        return {
            "runs": len(self.runs),
            "hours": self.hours,
            "reports": sum(r.reports for r in self.runs),
            "planted_incidents": self.planted,
            "recall": {"ours": self.recall("ours"), "naive": self.recall("naive")},
            "chance_incidents": {"ours": self.chance("ours"), "naive": self.chance("naive")},
            "chance_per_day": {
                "ours": round(self.chance_per_day("ours"), 3),
                "naive": round(self.chance_per_day("naive"), 3),
            },
            "decoy_hits": {"ours": self.decoy_hits("ours"), "naive": self.decoy_hits("naive")},
            "replay_reports_per_s": round(self.reports_per_s, 1),
            "outbreaks": self.outbreaks,
            "outbreak_surges": self.outbreak_surges if self.outbreaks else None,
            "outbreak_local": self.outbreak_local if self.outbreaks else None,
            "outbreak_local_linked": self.outbreak_local_linked if self.outbreaks else None,
        }


def pool(runs: Sequence[Run]) -> list[Pooled]:
    by_stream: dict[str, list[Run]] = {}
    for run in runs:
        by_stream.setdefault(run.stream.name, []).append(run)
    return [Pooled(group[0].stream, tuple(group)) for group in by_stream.values()]


def _pair(ours: str, naive: str) -> str:
    return f"{ours} / {naive}"


def _recall(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table_rows(pooled: Sequence[Pooled], hours: float) -> list[str]:
    rows = [
        "| stream | background reports/min | hours | planted incidents "
        "| recall (ours / naive) | chance incidents (ours / naive) "
        "| chance per day (ours / naive) | decoy hits (ours / naive) | replay reports/s (ours) "
        "| outbreak surges (goal) | outbreak local linked |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in pooled:
        surges = linked = "-"
        if p.outbreaks:
            surges = f"{p.outbreak_surges} ({p.outbreaks})"
            fraction = (
                f"{p.outbreak_local_linked / p.outbreak_local:.3f}" if p.outbreak_local else "-"
            )
            linked = f"{fraction} ({p.outbreak_local_linked}/{p.outbreak_local})"
        recall = _pair(_recall(p.recall("ours")), _recall(p.recall("naive")))
        chance = _pair(str(p.chance("ours")), str(p.chance("naive")))
        per_day = _pair(f"{p.chance_per_day('ours'):.1f}", f"{p.chance_per_day('naive'):.1f}")
        decoys = _pair(str(p.decoy_hits("ours")), str(p.decoy_hits("naive")))
        rows.append(
            f"| {p.stream.name} | {p.stream.background_per_min:g} | {len(p.runs)} × {hours:g} "
            f"| {p.planted} | {recall} | {chance} | {per_day} | {decoys} "
            f"| {p.reports_per_s:,.0f} | {surges} | {linked} |"
        )
    return rows


def render_section(pooled: Sequence[Pooled], seeds: Sequence[int], hours: float) -> str:
    rates = " ".join(
        f"{p.stream.background_per_min:g}" for p in pooled if p.stream.name.startswith("uniform")
    )
    seed_list = " ".join(str(s) for s in seeds)
    out = [
        f"Seeds {seed_list}; {hours:g} h of simulated city each (~20 x 20 km, the default "
        "planted incidents and decoys that fit in the stream). Uniform streams spread their "
        "background evenly over the 8 categories and the whole city; `hotspot` adds a downtown "
        f"disk (2 km radius, 5x) and a nightlife street (1.5 km x 70 m, 10x) to "
        f"{HOTSPOT_RATE_PER_MIN:g}/min with the daily cycle (UTC hours; this stream starts at "
        f"{HOTSPOT_START[11:16]} UTC, the evening peak); `outbreak` plants `{OUTBREAK}` "
        f"(2.5 km district where three H3 res-6 cells meet) over {OUTBREAK_RATE_PER_MIN:g}/min.",
        "",
        "Reproduce:",
        "",
        "```",
        f".venv/bin/python benchmarks/density.py --rates {rates} --seeds {seed_list} "
        f"--hours {hours:g}",
        "```",
        "",
        *table_rows(pooled, hours),
        "",
        "Pooled over the seeds. Chance incidents are opened local incidents that match no "
        "planted truth and lie in no planted surge or outbreak (`chance_incidents` of "
        "`geoincident evaluate --json`); per day scales them by 24 h over the simulated hours. "
        "Outbreak surges counts the distinct surges of its category over its res-6 regions "
        "while it runs (goal: one per outbreak, in brackets); linked is the share of its local "
        "incidents whose `surge_id` names one of them. Replay reports/s is the wall clock of the "
        "whole `geoincident replay` process on this machine, start-up included: the one column "
        "here that changes from run to run.",
        "",
        *limits_rows(),
    ]
    return "\n".join(out) + "\n"


# (radius m, window s) of the tightness columns of the limits table
TIGHTNESS = ((50.0, 180.0), (50.0, 300.0), (100.0, 300.0), (100.0, 600.0), (250.0, 900.0))
LIMIT_RATES = (30.0, 100.0, 300.0, 1000.0, 2770.0, 5000.0)
CITY_KM2 = 400.0


def reporters_needed(per_min: float, radius_m: float, window_s: float) -> int:
    """Independent reporters, all within radius_m and window_s of each other's centre, that
    the default significance test opens on over a uniform background of `per_min` reports a
    minute spread over eight categories and CITY_KM2 (the threshold of 5 aside)."""
    params = DetectorParams()
    significance = params.significance
    scales = [(r, w) for r in significance.radii_m for w in significance.windows_s]
    budget = significance.max_false_per_day / len(params.taxonomy.names)
    per_category = per_min / len(params.taxonomy.names)
    for needed in range(1, 200):
        counts = [float(needed) if r >= radius_m and w >= window_s else 0.0 for r, w in scales]
        if judge(scales, counts, per_category / CITY_KM2, per_category, budget).significant:
            return needed
    return 200


def limits_rows() -> list[str]:
    heads = " | ".join(f"{r:g} m, {w / 60:g} min" for r, w in TIGHTNESS)
    rows = [
        "**Where a 5-reporter incident stops standing out.** Independent reporters a group "
        f"needs to open with the default test, by how tightly its reports sit, over a uniform "
        f"background spread over eight categories and {CITY_KM2:g} km² (computed with "
        "`geoincident.detectors.significance.judge`; the threshold of 5 applies as well, so "
        "read anything below 5 as 5):",
        "",
        f"| background reports/min | {heads} |",
        "|---:|" + "---:|" * len(TIGHTNESS),
    ]
    for per_min in LIMIT_RATES:
        needed = " | ".join(str(reporters_needed(per_min, r, w)) for r, w in TIGHTNESS)
        rows.append(f"| {per_min:,.0f} | {needed} |")
    rows += [
        "",
        "Up to ~300 reports/min five reporters around one street corner (100 m, 10 min) are "
        "an incident at the fifth report. From ~1,000/min they must come within ~50 m and 5 "
        "minutes, or be more; at ~2,770/min five reporters stand out only within 50 m and 3 "
        "minutes, and from ~5,000/min not at all: there a 5-reporter incident can no longer be "
        "told apart from chance, and incidents open only with more reporters, later.",
    ]
    return rows


def write_section(path: Path, section: str) -> None:
    """Replace what lies between the markers; append heading and markers when absent."""
    document = path.read_text() if path.exists() else ""
    begin = document.find(DENSITY_BEGIN)
    end = document.find(DENSITY_END, begin) if begin >= 0 else -1
    block = f"{DENSITY_BEGIN}\n{section}{DENSITY_END}"
    if begin >= 0 and end >= 0:
        document = document[:begin] + block + document[end + len(DENSITY_END) :]
    else:
        document = document.rstrip("\n") + ("\n\n" if document else "")
        document += f"{DENSITY_HEADING}\n\n{block}\n"
    path.write_text(document)


def _run_json(run: Run) -> dict:
    def side(evaluation: Evaluation) -> dict:
        doc = evaluation.to_json()
        # Thousands of ids at high rates: the counts say what the benchmark needs.
        doc.pop("false_incident_ids")
        return doc

    return {
        "stream": run.stream.name,
        "seed": run.seed,
        "hours": run.hours,
        "reports": run.reports,
        "replay_s": round(run.replay_s, 3),
        "replay_reports_per_s": round(run.reports_per_s, 1),
        "ours": side(run.ours),
        "naive": side(run.naive),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=list(DEFAULT_RATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--hours", type=float, default=DEFAULT_HOURS)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "quality.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "density.json")
    parser.add_argument("--keep", type=Path, help="keep the streams and incidents in this folder")
    args = parser.parse_args(argv)
    if any(rate <= 0 for rate in args.rates):
        parser.error("--rates must be > 0")
    if args.hours <= 0:
        parser.error("--hours must be > 0")
    geoincident = geoincident_bin()
    streams = streams_for(args.rates)
    runs = []
    with tempfile.TemporaryDirectory(prefix="geoincident-density-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for stream in streams:
            for seed in args.seeds:
                run = run_stream(stream, seed, args.hours, workdir, geoincident)
                print(
                    f"{stream.name} seed {seed}: {run.reports:,} reports, replay "
                    f"{run.reports_per_s:,.0f} reports/s; recall {run.ours.recall:.3f} "
                    f"(naive {run.naive.recall:.3f}), chance incidents "
                    f"{run.ours.chance_incidents} (naive {run.naive.chance_incidents})",
                    file=sys.stderr,
                )
                runs.append(run)
                # Write as we go: a long run that is stopped still leaves what it measured.
                pooled = pool(runs)
                section = render_section(pooled, args.seeds, args.hours)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                write_section(args.output, section)
                args.json.write_bytes(
                    orjson.dumps(
                        {
                            "seeds": args.seeds,
                            "hours": args.hours,
                            "streams": [
                                {**p.stream.to_json(), "pooled": p.to_json()} for p in pooled
                            ],
                            "runs": [_run_json(r) for r in runs],
                        },
                        option=orjson.OPT_INDENT_2,
                    )
                    + b"\n"
                )
    print("\n".join(table_rows(pool(runs), args.hours)))
    print(f"wrote {args.output} and {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
