"""Running `geoincident worker` for real against the session's Tansu broker, and talking to it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from geoincident.geo import destination
from geoincident.stream.broker import ensure_topics, free_tcp_port


class ChildProcess:
    """A `geoincident` subprocess writing to its own log: stopped with SIGTERM (killed if it
    does not stop), its log's last lines for assertion messages."""

    process: subprocess.Popen[bytes] | None = None
    log_path: Path

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def story(self, lines: int = 80) -> str:
        """The log's last lines without the routine ones (a checkpoint every second or two),
        for a failure message: what the process did and said."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines() if "event=checkpoint seq=" not in line]
        return "\n".join(kept[-lines:])


class WorkerProcess(ChildProcess):
    """One worker subprocess with its own topics, group, web port and log."""

    def __init__(self, bootstrap: str, names: dict[str, str], workdir: Path, **env: str) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self.workdir = workdir
        self.web_port = free_tcp_port()
        self.env = dict(os.environ)
        self.env.update(
            GEOINCIDENT_TOPICS__REPORTS=names["reports"],
            GEOINCIDENT_TOPICS__INCIDENTS=names["incidents"],
            GEOINCIDENT_TOPICS__REPORTS_DLQ=names["reports_dlq"],
            GEOINCIDENT_TOPICS__ACTIONS=names["actions"],
            GEOINCIDENT_TOPICS__ACTIONS_DLQ=names["actions_dlq"],
            GEOINCIDENT_TOPICS__PARTITIONS=str(names.get("partitions", 1)),
            GEOINCIDENT_KAFKA__GROUP_ID=names["group"],
            GEOINCIDENT_WORKER__DATA_DIR=str(workdir / "state"),
            **env,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "worker.log"

    def start(self) -> WorkerProcess:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "geoincident.stream.cli",
                "worker",
                "--brokers",
                self.bootstrap,
                "--web-port",
                str(self.web_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        return self

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=2) as r:
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as error:
            return error.code, orjson.loads(error.read() or b"{}")

    def text(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=2) as r:
            return r.read().decode()

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.story()
            try:
                if predicate():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        try:
            stats = self.get("/stats")[1]
        except OSError as error:
            stats = {"unreachable": str(error)}
        raise AssertionError(f"condition not met in {timeout_s} s; stats {stats}\n{self.story()}")

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled series of /metrics, None if it is not there."""
        for line in self.text("/metrics").splitlines():
            found, _, value = line.partition(" ")
            if found == name:
                return float(value)
        return None

    def totals(self) -> dict[str, int]:
        return self.get("/stats")[1]["totals"]

    def processed(self) -> int:
        """Reports read, each once (with [scale], halo copies are not input: their owner
        counts them)."""
        return sum(n for outcome, n in self.totals().items() if outcome != "halo")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        self.process.wait(30)


def topic_names(topic_name: Callable[[str], str], partitions: int = 1) -> dict:
    return {
        "reports": topic_name("reports"),
        "incidents": topic_name("incidents"),
        "reports_dlq": topic_name("reports-dlq"),
        "actions": topic_name("actions"),
        "actions_dlq": topic_name("actions-dlq"),
        "group": topic_name("group"),
        "partitions": partitions,
    }


def create_topics(bootstrap: str, names: dict) -> None:
    n = names["partitions"]
    topics = {
        names[k]: n for k in ("reports", "incidents", "reports_dlq", "actions", "actions_dlq")
    }
    asyncio.run(ensure_topics(bootstrap, topics))


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    key: bytes | None = None,
    client_options: dict | None = None,
) -> int:
    async def run() -> int:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=5, **(client_options or {})
        )
        await producer.start()
        count = 0
        try:
            futures = []
            for value in values:
                futures.append(await producer.send(topic, value, key=key))
                count += 1
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return count

    return asyncio.run(run())


def produce_to_partitions(bootstrap: str, topic: str, by_partition: dict[int, list[bytes]]) -> int:
    """Each partition's values to that partition, in order."""

    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            futures = [
                await producer.send(topic, value, partition=partition)
                for partition, values in by_partition.items()
                for value in values
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return len(futures)

    return asyncio.run(run())


def consume(
    bootstrap: str,
    topic: str,
    settle_s: float = 2.0,
    timeout_s: float = 60.0,
    until: Callable[[list[bytes]], bool] | None = None,
    client_options: dict | None = None,
) -> list[bytes]:
    """Everything on a topic: read until `until` holds (then `settle_s` more) or it is quiet."""
    records = consume_records(bootstrap, topic, settle_s, timeout_s, until, client_options)
    return [record.value for record in records]


def consume_records(
    bootstrap: str,
    topic: str,
    settle_s: float = 2.0,
    timeout_s: float = 60.0,
    until: Callable[[list[bytes]], bool] | None = None,
    client_options: dict | None = None,
) -> list:
    """`consume`, with the records whole (aiokafka's: partition, offset, timestamp, value)."""

    async def run() -> list:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **(client_options or {}),
        )
        await consumer.start()
        records: list = []
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        satisfied_at = None
        try:
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                fetched = [m for messages in batch.values() for m in messages]
                records.extend(fetched)
                got = [m.value for m in fetched]
                values.extend(got)
                now = time.monotonic()
                if got:
                    quiet_since = now
                if until is not None:
                    if satisfied_at is None and until(values):
                        satisfied_at = now
                    if satisfied_at is not None and now - satisfied_at >= settle_s:
                        break
                elif now - quiet_since >= settle_s and values:
                    break
        finally:
            await consumer.stop()
        return records

    return asyncio.run(run())


def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> dict[int, int | None]:
    async def run() -> dict[int, int | None]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            return {
                p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)
            }
        finally:
            await consumer.stop()

    return asyncio.run(run())


def events(values: list[bytes]) -> list[dict]:
    return [orjson.loads(v) for v in values]


def without_emitted_at(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "emitted_at"}


class Tail:
    """Every value of a topic, read in a thread of its own while the test runs."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.values: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                for messages in batch.values():
                    self.values.extend(orjson.loads(m.value) for m in messages)
        finally:
            await consumer.stop()

    def __enter__(self) -> Tail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_for(self, predicate, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for value in list(self.values):
                if predicate(value):
                    return value
            time.sleep(0.1)
        raise AssertionError(f"no such event on {self.topic} in {timeout_s} s: {self.values}")


def planted_clusters(
    now_ms: int,
    places: list[tuple[str, float, float]],
    *,
    ago_ms: int,
    step_ms: int,
    spread_m: float,
    sources: tuple[str, ...] | None = None,
) -> list[bytes]:
    """Five reporters around each (category, lat, lon), spread_m apart from it, the first
    `ago_ms` before now and the others `step_ms` apart; then one report now far away, which
    moves event time past them: one incident opens per place (report ids p<place>-r<n>)."""
    values = []
    for place, (category, lat0, lon0) in enumerate(places):
        for n in range(5):
            lat, lon = destination(lat0, lon0, 72.0 * n, spread_m)
            value = {
                "id": f"p{place}-r{n}",
                "ts": now_ms - ago_ms + n * step_ms,
                "lat": lat,
                "lon": lon,
                "reporter": f"p{place}-user{n}",
            }
            if sources is not None:
                value["source"] = sources[n]
            values.append({**value, "tags": [f"#{category}"]})
    far = {"id": "far", "ts": now_ms, "lat": 47.0, "lon": -121.0, "reporter": "far"}
    values.append({**far, "tags": ["#pothole"]})
    return [orjson.dumps(v) for v in values]
