"""`geoincident demo`: an embedded broker, the worker and a live simulated city, one command.

Every child runs in its own session so a Ctrl-C in the terminal reaches only this process,
which then stops them in order (simulator, worker with its offset commit, broker); each child
also dies with this process if it is killed outright, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from rich.console import Console

from geoincident.stream import security
from geoincident.stream.broker import (
    EmbeddedBroker,
    _die_with_parent_preexec,
    ensure_topics,
    free_tcp_port,
)
from geoincident.stream.config import Settings

# Six synthetic districts over the simulator's default city (deploy/examples/); in a clone of
# the project only (an installed package has no deploy/ folder, and the demo runs without).
EXAMPLE_DISTRICTS = Path(__file__).resolve().parent.parent / "deploy/examples/districts.geojson"


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "geoincident.stream.cli", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent_preexec(),  # noqa: PLW1509
    )


def _stop(process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_demo(
    settings: Settings,
    brokers: str | None,
    speed: float,
    hours: float,
    seed: int,
    config: Path | None = None,
) -> int:
    console = Console(highlight=False, soft_wrap=True)
    workdir = Path(tempfile.mkdtemp(prefix="geoincident-demo-"))
    broker: EmbeddedBroker | None = None
    worker = simulator = console_process = None
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if brokers is None:
            broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
            brokers = broker.bootstrap
        topics = settings.topics
        client_options = security.client_options(settings.kafka)
        asyncio.run(ensure_topics(brokers, settings.topic_partitions(), **client_options))
        web_port = free_tcp_port()
        env = dict(os.environ)
        env.update(
            GEOINCIDENT_WORKER__DATA_DIR=str(workdir / "state"),
            GEOINCIDENT_KAFKA__GROUP_ID=f"geoincident-demo-{os.getpid()}",
        )
        if config is not None:
            # the worker, the console and the simulator read the same file (its [kafka]
            # security settings included)
            env["GEOINCIDENT_CONFIG"] = str(config.resolve())
        districts = None
        if settings.detection.geofences is None and EXAMPLE_DISTRICTS.is_file():
            # the simulated city's example districts: incidents show their jurisdiction
            districts = EXAMPLE_DISTRICTS
            env["GEOINCIDENT_DETECTION__GEOFENCES"] = str(districts)
        worker = _spawn(
            ["worker", "--brokers", brokers, "--web-port", str(web_port)],
            workdir / "worker.log",
            env,
        )
        # the dispatchers' console, with a token for this run (actions need one)
        console_port = free_tcp_port()
        token = os.environ.get("GEOINCIDENT_CONSOLE_TOKEN") or secrets.token_urlsafe(12)
        console_process = _spawn(
            ["console", "--brokers", brokers, "--port", str(console_port)],
            workdir / "console.log",
            {**env, "GEOINCIDENT_CONSOLE_TOKEN": token},
        )
        console.print(
            f"[bold]console http://127.0.0.1:{console_port}/[/bold]  (token for actions: {token})"
        )
        simulator = _spawn(
            [
                "simulate",
                "--live",
                "--brokers",
                brokers,
                "--topic",
                topics.reports,
                "--speed",
                str(speed),
                "--hours",
                str(hours),
                "--seed",
                str(seed),
                "--anchor",
                "end",
            ],
            workdir / "simulator.log",
            env,
        )
        console.print(
            f"[bold]geoincident demo[/bold]  broker {brokers}  "
            f"metrics http://127.0.0.1:{web_port}/metrics  logs {workdir}"
        )
        if districts is not None:
            console.print(f"districts (jurisdictions) from {districts}")
        console.print(
            f"a simulated city at {speed:g}x speed; incidents appear as they open. Ctrl-C stops."
        )
        asyncio.run(
            _watch(
                console,
                brokers,
                topics.incidents,
                lambda: stopping,
                worker,
                simulator,
                client_options,
            )
        )
        return 0
    finally:
        console.print("stopping: simulator, worker, broker ...")
        _stop(simulator, 5.0)
        _stop(console_process, 5.0)
        _stop(worker, 15.0)
        if broker is not None:
            broker.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        console.print("stopped.")


async def _watch(
    console: Console,
    brokers: str,
    topic: str,
    should_stop,
    worker: subprocess.Popen[bytes],
    simulator: subprocess.Popen[bytes],
    client_options: dict[str, Any],
) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=brokers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options,
    )
    await consumer.start()
    opened = 0
    simulator_done = None
    started = time.monotonic()
    try:
        while not should_stop():
            if worker.poll() is not None:
                console.print(f"[red]the worker exited with code {worker.returncode}[/red]")
                return
            batch = await consumer.getmany(timeout_ms=250)
            if simulator_done is None and simulator.poll() is not None:
                simulator_done = True
                console.print("the simulated stream has ended; Ctrl-C stops the demo.")
            for messages in batch.values():
                for message in messages:
                    event = orjson.loads(message.value)
                    if event["event"] == "opened":
                        opened += 1
                    _print_event(console, event, time.monotonic() - started)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


_STYLE = {"opened": "bold red", "updated": "yellow", "resolved": "green"}


def _print_event(console: Console, event: dict, elapsed_s: float) -> None:
    name = event["event"]
    if name == "updated" and not event.get("acknowledged_by"):
        return  # growth is in the worker log; the terminal shows openings and endings
    reason = f" ({event['resolved_reason']})" if name == "resolved" else ""
    console.print(
        f"[dim]{elapsed_s:6.1f}s[/dim] [{_STYLE.get(name, '')}]{name.upper():9}[/] "
        f"{event['incident_id']}  {event['kind']:5} {event['category']:<20} "
        f"{event['lat']:.5f},{event['lon']:.5f}  {event.get('jurisdiction') or '-'}  "
        f"{event['independent_reporters']} reporters  "
        f"validated {event['validated_at']}{reason}"
    )
