"""Detection quality over several seeds: simulate -> geoincident replay -> evaluate, beside the
naive baseline on the same streams. Writes docs/quality.md (``make quality``).

The document holds no wall-clock numbers, so it only changes when the detector's decisions do.
Its density section (``benchmarks/density.py``) is carried over as it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from geoincident.sim.common import geoincident_bin, percentile, read_jsonl
from geoincident.sim.evaluate import Evaluation, evaluate, load_truth
from geoincident.sim.naive import run_naive
from geoincident.sim.simulate import FAMILIES, SimParams, report_to_json, simulate, truth_to_json

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEEDS = (1, 2, 3, 4, 5)
DEFAULT_HOURS = 6.0
# benchmarks/density.py owns the text between these markers, under its heading.
DENSITY_HEADING = "## Density"
DENSITY_BEGIN = "<!-- density:begin -->"
DENSITY_END = "<!-- density:end -->"


@dataclass(frozen=True, slots=True)
class SeedResult:
    seed: int
    reports: int
    ours: Evaluation
    naive: Evaluation


def run_seed(seed: int, hours: float, workdir: Path, geoincident: str) -> SeedResult:
    sim = simulate(SimParams(seed=seed, hours=hours))
    reports_path = workdir / f"reports-{seed}.jsonl"
    truth_path = workdir / f"truth-{seed}.json"
    incidents_path = workdir / f"incidents-{seed}.jsonl"
    lines = [orjson.dumps(report_to_json(r)) for r in sim.reports]
    reports_path.write_bytes(b"".join(line + b"\n" for line in lines))
    truth_path.write_bytes(orjson.dumps(truth_to_json(sim)))
    completed = subprocess.run(
        [geoincident, "replay", str(reports_path), "-o", str(incidents_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        sys.exit(f"geoincident replay failed on seed {seed}:\n{completed.stderr}")
    truths = load_truth(truth_path)
    ours = evaluate(read_jsonl(incidents_path), truths)
    naive = evaluate(run_naive(lines), truths)
    return SeedResult(seed=seed, reports=len(lines), ours=ours, naive=naive)


# ---------------------------------------------------------------- the document


def _ratio(numerator: int, denominator: int) -> str:
    if denominator == 0:
        return "-"
    return f"{numerator / denominator:.3f} ({numerator}/{denominator})"


def _seconds(values: Sequence[float]) -> str:
    p50, p95 = percentile(list(values), 50), percentile(list(values), 95)
    if p50 is None or p95 is None:
        return "-"
    return f"{p50:.1f} / {p95:.1f}"


def _pooled(runs: Sequence[Evaluation]) -> dict[str, str]:
    scored = sum(r.opened_local - r.surge_local for r in runs)
    matched = sum(r.matched_local for r in runs)
    return {
        "recall": _ratio(sum(r.detected for r in runs), sum(r.incident_truths for r in runs)),
        "precision": _ratio(matched, scored) if scored else "1.000 (0/0)",
        "opened local incidents": str(sum(r.opened_local for r in runs)),
        "decoy hits": str(sum(r.decoy_hits for r in runs)),
        "splits": str(sum(r.splits for r in runs)),
        "false incidents (background)": str(sum(r.false_incidents for r in runs)),
        "local incidents inside a surge": str(sum(r.surge_local for r in runs)),
        "surges detected": f"{sum(r.surge_detected for r in runs)}/"
        f"{sum(r.surge_truths for r in runs)}",
        "false surges": str(sum(r.false_surges for r in runs)),
        "delay from first report p50 / p95 (s)": _seconds(
            [d for r in runs for d in r.delays_first_report_s]
        ),
        "delay from threshold report p50 / p95 (s)": _seconds(
            [d for r in runs for d in r.delays_emit_s]
        ),
    }


def _family_rates(runs: Sequence[Evaluation]) -> dict[str, tuple[str, int, int]]:
    rates: dict[str, tuple[str, int, int]] = {}
    for run in runs:
        for score in run.families:
            expect, detected, planted = rates.get(score.family, (score.expect, 0, 0))
            rates[score.family] = (expect, detected + score.detected, planted + score.planted)
    return rates


def render_markdown(results: Sequence[SeedResult], hours: float) -> str:
    seeds = " ".join(str(r.seed) for r in results)
    ours = _pooled([r.ours for r in results])
    naive = _pooled([r.naive for r in results])
    out = [
        "# Detection quality",
        "",
        f"Seeds {seeds}; {hours:g} h of simulated city each (~20 x 20 km, 8 categories of "
        "background, planted incidents and decoys). For each seed: `geoincident simulate` → "
        "`geoincident replay` → `geoincident evaluate`, and the naive baseline on the same stream.",
        "",
        "The naive baseline (`geoincident.sim.naive`) is the detector one writes in an "
        "afternoon: one H3 res-9 cell per report, a 15-minute tumbling bucket, and an incident "
        "when 5 distinct reporter accounts share a (cell, category, bucket).",
        "",
        "Reproduce:",
        "",
        "```",
        "make quality",
        f"# or: .venv/bin/python benchmarks/quality.py --seeds {seeds} --hours {hours:g}",
        "```",
        "",
        "A single run by hand:",
        "",
        "```",
        "geoincident simulate --seed 1 -o reports.jsonl          # also writes reports.truth.json",
        "geoincident replay reports.jsonl -o incidents.jsonl",
        "geoincident evaluate --incidents incidents.jsonl --truth reports.truth.json",
        "```",
        "",
        "## All seeds pooled",
        "",
        "| metric | geoincident | naive |",
        "|---|---:|---:|",
    ]
    out += [f"| {name} | {ours[name]} | {naive[name]} |" for name in ours]
    out += [
        "",
        "Recall counts planted incidents (`expect: incident`) with at least one opened local "
        "incident; precision is opened local incidents that match one, over all opened local "
        "incidents (those inside a planted surge are counted apart). A match is the same "
        "category, within 400 m of the planted footprint, and overlapping in time with 5 min of "
        "slack; a split is a second incident on one planted incident. Delays are event time: "
        "from the first report to `validated_at`, and from `validated_at` to `emitted_at`, over "
        "the incidents each detector found (so not over the same set).",
        "",
        "## Per family (detected / planted)",
        "",
        "For `expect: none` the number is decoy hits: lower is better.",
        "",
        "| family | expect | geoincident | naive |",
        "|---|---|---:|---:|",
    ]
    ours_rates = _family_rates([r.ours for r in results])
    naive_rates = _family_rates([r.naive for r in results])
    for family in FAMILIES:
        if family not in ours_rates:
            continue
        expect, ours_hit, planted = ours_rates[family]
        _, naive_hit, _ = naive_rates[family]
        out.append(f"| {family} | {expect} | {ours_hit}/{planted} | {naive_hit}/{planted} |")
    out += [
        "",
        "## Per seed",
        "",
        "| seed | reports | recall (ours / naive) | precision (ours / naive) "
        "| decoy hits | splits | false incidents |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        out.append(
            f"| {r.seed} | {r.reports} | {r.ours.recall:.3f} / {r.naive.recall:.3f} "
            f"| {r.ours.precision:.3f} / {r.naive.precision:.3f} "
            f"| {r.ours.decoy_hits} / {r.naive.decoy_hits} | {r.ours.splits} / {r.naive.splits} "
            f"| {r.ours.false_incidents} / {r.naive.false_incidents} |"
        )
    return "\n".join(out) + "\n"


def density_section(document: str) -> str:
    """The density section of an existing document, heading to end marker, or ""."""
    begin = document.find(DENSITY_BEGIN)
    end = document.find(DENSITY_END, begin)
    if begin < 0 or end < 0:
        return ""
    heading = document.rfind(DENSITY_HEADING, 0, begin)
    return document[heading if heading >= 0 else begin : end + len(DENSITY_END)] + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--hours", type=float, default=DEFAULT_HOURS)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "quality.md")
    parser.add_argument("--keep", type=Path, help="keep the streams and incidents in this folder")
    args = parser.parse_args(argv)
    geoincident = geoincident_bin()
    with tempfile.TemporaryDirectory(prefix="geoincident-quality-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = []
        for seed in args.seeds:
            result = run_seed(seed, args.hours, workdir, geoincident)
            print(
                f"seed {seed}: recall {result.ours.recall:.3f} (naive {result.naive.recall:.3f}), "
                f"precision {result.ours.precision:.3f} (naive {result.naive.precision:.3f})",
                file=sys.stderr,
            )
            results.append(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    kept = density_section(args.output.read_text()) if args.output.exists() else ""
    args.output.write_text(render_markdown(results, args.hours) + ("\n" + kept if kept else ""))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
