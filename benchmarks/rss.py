"""Worker memory under a sustained load: does RSS stay flat once the windows are full?

`python benchmarks/rss.py [--load 1000] [--minutes 10]` (`make bench-rss`): starts an embedded
Tansu and one `geoincident worker` with its default settings, and paces the detection-latency
benchmark's stream (a national background plus planted clusters) at --load reports/s. State
grows while the windows fill (the longest window plus the lateness bound, ~18 minutes by
default), so the run first warms up for that long and then samples the worker's RSS every
10 s for --minutes. Prints the figures and writes them to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import worker as bench_worker  # noqa: E402
from replay import write_section  # noqa: E402

HEADING = "## Worker memory under sustained load"
SAMPLE_EVERY_S = 10.0
# A planted incident every 10 s: the latency benchmark's 4/s would be 14,400 incidents an hour,
# each retained for a day after it resolves, and that is not what a steady day looks like.
CLUSTERS_PER_S = 0.1
# Reports go out in one record batch per partition every TICK_S: the embedded Tansu's fetch
# stalls once a partition holds some 40,000 record batches (measured: a fetch at the tail
# answered in 57 ms at 20,000 batches and not within 5 s at 40,000), and the latency
# benchmark's 5 ms ticks would pass that within minutes.
TICK_S = 0.5


@dataclass
class Sample:
    t_s: float  # since the load started
    rss_mib: float
    processed: int | None


@dataclass
class RssRun:
    load: int
    warmup_s: float
    measured_s: float
    samples: list[Sample] = field(default_factory=list)
    sent: int = 0
    sent_rate: float = 0.0
    processed: int = 0
    reputation: dict[str, float] = field(default_factory=dict)
    failed: str = ""

    def measured(self) -> list[Sample]:
        return [s for s in self.samples if s.t_s >= self.warmup_s]


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def heading(args: argparse.Namespace) -> str:
    """The section's heading: a run with another reputation bound has a section of its own."""
    if args.max_reporters is None:
        return HEADING
    return f"{HEADING}, reputation bound {args.max_reporters:,}"


def reputation_figures(port: int) -> dict[str, float]:
    """Reporters tracked and evicted, from the worker's /metrics ({} if unreachable)."""
    names = {
        "geoincident_reporters_tracked": "tracked",
        "geoincident_reporters_evicted_total": "evicted",
    }
    text = bench_worker.metrics_text(port)
    if text is None:
        return {}
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[names[name]] = float(value)
    return found


def default_warmup_s() -> float:
    """The longest window plus the lateness bound (the state's fill time), plus a minute."""
    from geoincident.stream.config import load_settings

    params = load_settings().detector_params()
    surge_s = params.surge.window_ms / 1000.0 + 60.0
    return max(params.max_window_ms / 1000.0, surge_s) + params.allowed_lateness_ms / 1000.0 + 60.0


def run(args: argparse.Namespace, bench: bench_worker.Bench) -> RssRun:
    result = RssRun(load=args.load, warmup_s=args.warmup_s, measured_s=args.minutes * 60.0)
    names = bench.worker_names("rss")
    bench.topics({k: v for k, v in names.items() if k != "group"}, args.partitions)
    env = bench.worker_env(names, args.partitions)
    if args.max_reporters is not None:
        env["GEOINCIDENT_REPUTATION__MAX_REPORTERS"] = str(args.max_reporters)
    worker, port, log = bench.start_worker("rss", names, env)
    stop = threading.Event()
    started = [0.0]

    def sample() -> None:
        while not stop.wait(SAMPLE_EVERY_S):
            value = rss_mib(worker.pid)
            if value is None:
                return
            result.samples.append(
                Sample(time.monotonic() - started[0], value, bench_worker.processed(port))
            )

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        deadline = time.monotonic() + bench_worker.STARTUP_ALLOWANCE_S
        while True:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited:\n{bench_worker.tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready:\n{bench_worker.tail(log)}")
            with contextlib.suppress(OSError, ValueError):
                if bench_worker.http_json(port, "/ready")[0] == 200:
                    break
            time.sleep(0.2)
        # the latency benchmark's pacing, for the whole warm-up and measurement
        bench.args.paced_seconds = result.warmup_s + result.measured_s
        latency_run = bench_worker.LatencyRun(load=args.load, lateness_s=None)
        started[0] = time.monotonic()
        sampler.start()
        asyncio.run(
            bench_worker.Latency(bench).pace(
                names["reports"],
                args.load,
                latency_run,
                clusters_per_s=CLUSTERS_PER_S,
                tick_s=TICK_S,
            )
        )
        result.sent, result.sent_rate = latency_run.sent, latency_run.sent_rate
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited:\n{bench_worker.tail(log)}")
        # A flat RSS means nothing from a worker that stopped keeping up: it must have
        # processed what was sent (within a few seconds' worth) at the end.
        deadline = time.monotonic() + 60.0
        done = bench_worker.processed(port) or 0
        while done < result.sent and time.monotonic() < deadline:
            time.sleep(1.0)
            done = bench_worker.processed(port) or 0
        result.processed = done
        result.reputation = reputation_figures(port)
        if done < result.sent:
            raise RuntimeError(
                f"the worker processed {done:,} of {result.sent:,} reports:\n"
                f"{bench_worker.tail(log)}"
            )
    except RuntimeError as error:
        print(str(error), file=sys.stderr)
        result.failed = str(error).splitlines()[0]
    finally:
        stop.set()
        bench_worker.Children.stop(worker, grace_s=30.0)
    return result


def section(args: argparse.Namespace, result: RssRun) -> str:
    measured = result.measured()
    lines = [
        heading(args),
        "",
        f"`python benchmarks/rss.py --load {args.load} --minutes {args.minutes:g}"
        + ("" if args.warmup_minutes is None else f" --warmup-minutes {args.warmup_minutes:g}")
        + ("" if args.max_reporters is None else f" --max-reporters {args.max_reporters}")
        + "` "
        f"({time.strftime('%Y-%m-%d')}; {bench_worker.machine_line()}).",
        "",
        "One `geoincident worker` with its default settings"
        + (
            ""
            if args.max_reporters is None
            else f" (but `[reputation] max_reporters = {args.max_reporters:,}`)"
        )
        + " on an embedded Tansu, "
        f"{args.partitions} partitions, fed the detection-latency stream (a national "
        f"background plus a planted cluster every {1 / CLUSTERS_PER_S:.0f} s, sent in one "
        f"record batch per partition every {TICK_S:g} s) at "
        f"{args.load:,} reports/s. The windows fill for the longest window plus the lateness "
        f"bound, so the first {result.warmup_s / 60:.3g} minutes are warm-up; RSS (VmRSS) is "
        f"then sampled every {SAMPLE_EVERY_S:.0f} s for {args.minutes:g} minutes.",
        "",
    ]
    if result.failed or not measured:
        lines.append(f"The run failed: {result.failed or 'no samples'}.")
        return "\n".join(lines) + "\n"
    values = [s.rss_mib for s in measured]
    mean = statistics.fmean(values)
    spread = max(abs(v - mean) for v in values) / mean * 100.0
    first, last = measured[0], measured[-1]
    lines += [
        "| phase | samples | min | mean | max | max deviation from mean |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    warm = [s.rss_mib for s in result.samples if s.t_s < result.warmup_s]
    if warm:
        lines.append(
            f"| warm-up (windows filling) | {len(warm)} | {min(warm):.0f} MiB | "
            f"{statistics.fmean(warm):.0f} MiB | {max(warm):.0f} MiB | - |"
        )
    lines += [
        f"| measured {args.minutes:g} minutes | {len(values)} | {min(values):.0f} MiB | "
        f"{mean:.0f} MiB | {max(values):.0f} MiB | {spread:.1f} % |",
        "",
        f"Sent {result.sent:,} reports at {result.sent_rate:,.0f}/s; the worker processed all "
        f"of them ({result.processed:,}), keeping up throughout. RSS went from "
        f"{first.rss_mib:.0f} MiB at the start of "
        f"the measurement to {last.rss_mib:.0f} MiB at its end "
        f"({(last.rss_mib - first.rss_mib) / first.rss_mib * 100.0:+.1f} %)."
        + (
            f" At the end the reputation held {result.reputation['tracked']:,.0f} reporters "
            f"and had forgotten {result.reputation.get('evicted', 0):,.0f} early "
            "(`max_reporters`)."
            if "tracked" in result.reputation
            else ""
        ),
        "",
        "RSS every minute (MiB): "
        + ", ".join(f"{s.rss_mib:.0f}" for i, s in enumerate(result.samples) if i % 6 == 5)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=1000, help="reports/s (default 1000)")
    parser.add_argument("--minutes", type=float, default=10.0, help="measured (default 10)")
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="before measuring (default: the longest window + the lateness bound + 1 min)",
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--max-reporters",
        type=int,
        default=None,
        help="the worker's [reputation] max_reporters (default: the config's default)",
    )
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    if args.load < 1 or args.minutes <= 0:
        parser.error("--load and --minutes must be positive")
    args.warmup_s = (
        default_warmup_s() if args.warmup_minutes is None else args.warmup_minutes * 60.0
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from geoincident.stream.broker import EmbeddedBroker

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    children = bench_worker.Children()
    work = Path(tempfile.mkdtemp(prefix="geoincident-rss-"))
    keep = False
    try:
        with EmbeddedBroker(log_path=work / "tansu.log") as broker:
            bench_args = bench_worker.parse_args(
                ["--skip-quix", "--partitions", str(args.partitions)]
            )
            bench = bench_worker.Bench(bench_args, work, broker.bootstrap, children)
            total_min = (args.warmup_s + args.minutes * 60.0) / 60.0
            print(f"pacing {args.load:,}/s for {total_min:.0f} minutes ...", file=sys.stderr)
            result = run(args, bench)
        text = section(args, result)
        print(text)
        write_section(Path(args.output), heading(args), text)
        keep = bool(result.failed)
        return 1 if result.failed else 0
    finally:
        children.stop_all()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
