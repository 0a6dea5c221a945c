"""`geoincident notify`: incident events pushed to where dispatchers work.

The notifier reads the `incidents` topic (contract §2) and delivers each event to the
webhooks whose routes match it (`[[notify.webhooks]]`) and, for every validated local
incident, files one GeoReport v2 service request with the city (`[notify.open311]`).

**Why its own process, not part of the console.** Alerts must go out when no one has the
console open: the console is a page dispatchers look at, the notifier is what reaches them when
they are not looking. It restarts, is deployed and scales apart from the console and from the
worker (a receiver that hangs or a Slack outage slows only the notifier; a console restart
drops no alert), and it keeps its own offsets in its own consumer group
(`notify.consumer_group`), so what it has delivered is decided by its deliveries alone.

**Delivery guarantee.** At least once, deduplicated:

* auto-commit is off; the offset of a record is committed only once every delivery the event
  needs has succeeded or failed for good (records of one partition are committed in order, so
  a slow delivery holds back the commits after it, never skips them);
* every outcome is written to a SQLite file, `<notify.state_dir>/notify.sqlite3`, before the
  offset is committed: `delivered(sink, incident_id, version, at)` and
  `failed(sink, incident_id, version, at, attempts, last_error, body)`. An event read again
  (after a crash or a restart, or produced twice by the worker, contract §2.1) whose
  (sink, incident_id, version) is in either table is not sent again. A crash between a
  successful POST and its row means one more POST after the restart: the `Idempotency-Key`
  header (`<incident_id>:<version>`) lets the receiver drop it;
* a delivery that fails for good (4xx other than 429 at once; connection errors, timeouts, 429
  and 5xx after `max_attempts` attempts with exponential backoff) lands in `failed` and in a
  `event=delivery_failed` log line, and is not retried on its own: an operator can replay it
  from the `body` column. Processing goes on with the other events and sinks.

**Ordering and isolation.** Each sink has its own queue and task: sinks deliver concurrently,
so a dead receiver delays nobody else, and one sink gets its events in the order they were
read (the versions of an incident in order). Up to `MAX_PENDING` records may wait on slow
sinks; past that the consumer pauses (and keeps its group membership) until they drain.
When stopped (SIGTERM), it reads no more and gives the deliveries under way `timeout_s` to
finish and be committed; what is left is read again by the next run (same Idempotency-Key).

**Routes** (`routes()`): a webhook gets an event when each of its non-empty filters (`kinds`,
`events`, `categories`, `jurisdictions`) holds the event's value. Surge events (`kind`
"surge") go to sinks whose `kinds` include "surge" or are empty (and, since a surge's
`jurisdiction` is always null, never to a sink with a `jurisdictions` filter). A local event
with a non-null `surge_id` is filed under its surge, whose own events carry the escalation: it
does not go to a sink with `surge_members = "no"` (the default), and does with "separately".

**Open311** (`open311_service_code()`): one service request per local incident, filed on its
`opened` event (whether or not it lies in a surge: the city fixes each one), to
`<endpoint>/requests.json`, form-encoded (`formats.open311_post`). `service_codes` maps a
category to its service code; a category it does not name is not filed. An empty map files
every category, with the category name as the service code. Exactly one request per
incident_id: the answer's `service_request_id` (or `token`, when the city answers with one) is
kept in the table `open311(incident_id, version, service_request_id, token, at)`. 5xx,
429, timeouts and connection errors are retried like a webhook's. The API key comes from the
environment variable `GEOINCIDENT_OPEN311_API_KEY` or else from `api_key_file`; it is sent in
the form only, never logged and never stored (the `body` kept for a failed request leaves it
out).

Logs go to the logger "geoincident.notify", one logfmt line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import sys
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, KafkaError

from geoincident import __version__
from geoincident.files import MAX_SECRET_FILE_BYTES, read_bounded_text
from geoincident.stream.app import kafka_client_options, logfmt, run_until_signalled
from geoincident.stream.config import (
    ConfigError,
    NotifyConfig,
    Open311Config,
    Settings,
    WebhookConfig,
)
from geoincident.stream.formats import open311_post, slack_message

log = logging.getLogger("geoincident.notify")

API_KEY_VARIABLE = "GEOINCIDENT_OPEN311_API_KEY"
OPEN311_SINK = "open311"  # the Open311 sink's name in the state tables
STATE_FILE = "notify.sqlite3"
# Records read whose deliveries are not all settled, over all partitions: past this the
# consumer pauses until they drain (it keeps polling, so it stays in its group).
MAX_PENDING = 10_000
POLL_TIMEOUT_MS = 200
POLL_MAX_RECORDS = 500
USER_AGENT = f"geoincident-notify/{__version__}"
_ERROR_DETAIL_CHARS = 200
# An incident event is a few kilobytes; a larger record is skipped (logged), never parsed.
MAX_EVENT_BYTES = 1024 * 1024
# What is read of a receiver's answer: an error's first line, an Open311 request id. The rest
# of a longer answer is not read (a receiver cannot fill the notifier's memory).
MAX_ANSWER_BYTES = 64 * 1024


# ---------------------------------------------------------------------------------- routes


def routes(webhook: WebhookConfig, event: Mapping[str, Any]) -> bool:
    """Whether `webhook` receives `event` (the module docstring has the rules)."""
    kind = event.get("kind")
    if webhook.kinds and kind not in webhook.kinds:
        return False
    if webhook.events and event.get("event") not in webhook.events:
        return False
    if webhook.categories and event.get("category") not in webhook.categories:
        return False
    if webhook.jurisdictions and event.get("jurisdiction") not in webhook.jurisdictions:
        return False
    if kind == "local" and event.get("surge_id") is not None:
        return webhook.surge_members == "separately"
    return True


def open311_service_code(open311: Open311Config, event: Mapping[str, Any]) -> str | None:
    """The service code to file `event` under, or None when it files nothing: only the `opened`
    event of a local incident files, under its category's code (the category's own name when
    `service_codes` is empty)."""
    if event.get("event") != "opened" or event.get("kind") != "local":
        return None
    category = event.get("category")
    if not isinstance(category, str):
        return None
    if not open311.service_codes:
        return category
    return open311.service_codes.get(category)


def backoff_delay(
    attempt: int,
    initial_s: float,
    max_s: float,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): `initial_s` doubling with
    each attempt, capped at `max_s`, with "equal jitter" (a uniform draw between half of it
    and all of it, so receivers that failed together are not retried together). A
    `Retry-After` from the receiver lengthens it (never past `max_s`)."""
    base = min(max_s, initial_s * 2.0 ** min(attempt - 1, 62))
    delay = base / 2 + rng.uniform(0, base / 2)
    if retry_after_s is not None:
        delay = max(delay, min(max_s, retry_after_s))
    return delay


def open311_api_key(open311: Open311Config | None) -> str | None:
    """The Open311 API key: GEOINCIDENT_OPEN311_API_KEY, else the first line of
    `api_key_file`, else None (an endpoint that needs none)."""
    if open311 is None:
        return None
    key = os.environ.get(API_KEY_VARIABLE, "").strip()
    if key:
        return key
    if open311.api_key_file:
        try:
            text = read_bounded_text(open311.api_key_file, MAX_SECRET_FILE_BYTES)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(
                f"notify.open311.api_key_file: cannot read {open311.api_key_file}: {reason}"
            ) from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise ConfigError(f"notify.open311.api_key_file: {open311.api_key_file} is empty")
        return lines[0]
    return None


def check_config(notify: NotifyConfig) -> None:
    """ConfigError (naming the key) for what the config model does not check: sink names are
    the keys of the state tables, so they must be unique."""
    names = [webhook.name for webhook in notify.webhooks]
    seen: set[str] = set()
    for index, name in enumerate(names):
        if not name:
            raise ConfigError(f"notify.webhooks.{index}.name: must not be empty")
        if name in seen:
            raise ConfigError(f"notify.webhooks.{index}.name: {name!r} is used twice")
        if name == OPEN311_SINK:
            raise ConfigError(
                f"notify.webhooks.{index}.name: {OPEN311_SINK!r} is the Open311 sink's name"
            )
        seen.add(name)
    if not notify.webhooks and notify.open311 is None:
        raise ConfigError(
            "notify: no [[notify.webhooks]] and no [notify.open311]: nothing to deliver to"
        )


# ----------------------------------------------------------------------------------- state


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StateStore:
    """The notifier's record of deliveries: one SQLite file under `state_dir`.

    Every write is its own committed transaction, made before the record's offset can be
    committed to Kafka.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS delivered (
        sink TEXT NOT NULL, incident_id TEXT NOT NULL, version INTEGER NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (sink, incident_id, version));
    CREATE TABLE IF NOT EXISTS failed (
        sink TEXT NOT NULL, incident_id TEXT NOT NULL, version INTEGER NOT NULL,
        at TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT NOT NULL, body BLOB,
        PRIMARY KEY (sink, incident_id, version));
    CREATE TABLE IF NOT EXISTS open311 (
        incident_id TEXT NOT NULL PRIMARY KEY, version INTEGER NOT NULL,
        service_request_id TEXT, token TEXT, at TEXT NOT NULL);
    PRAGMA user_version = 1;
    """

    def __init__(self, state_dir: str | Path) -> None:
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / STATE_FILE
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(self.SCHEMA)

    def close(self) -> None:
        self._db.close()

    def settled(self, sink: str, incident_id: str, version: int) -> bool:
        """Delivered, or failed for good: either way not to be sent again."""
        key = (sink, incident_id, version)
        for table in ("delivered", "failed"):
            row = self._db.execute(
                f"SELECT 1 FROM {table} WHERE sink = ? AND incident_id = ? AND version = ?", key
            ).fetchone()
            if row is not None:
                return True
        return False

    def open311_settled(self, incident_id: str) -> bool:
        """A request was filed for the incident, or failed for good."""
        if self._db.execute(
            "SELECT 1 FROM open311 WHERE incident_id = ?", (incident_id,)
        ).fetchone():
            return True
        row = self._db.execute(
            "SELECT 1 FROM failed WHERE sink = ? AND incident_id = ?", (OPEN311_SINK, incident_id)
        ).fetchone()
        return row is not None

    def record_delivered(self, sink: str, incident_id: str, version: int) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?)",
            (sink, incident_id, version, _now()),
        )

    def record_failed(
        self,
        sink: str,
        incident_id: str,
        version: int,
        attempts: int,
        last_error: str,
        body: bytes,
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO failed VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sink, incident_id, version, _now(), attempts, last_error, body),
        )

    def record_open311(
        self, incident_id: str, version: int, service_request_id: str | None, token: str | None
    ) -> None:
        at = _now()
        with contextlib.closing(self._db.cursor()) as cursor:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                cursor.execute(
                    "INSERT OR IGNORE INTO open311 VALUES (?, ?, ?, ?, ?)",
                    (incident_id, version, service_request_id, token, at),
                )
                cursor.execute(
                    "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?)",
                    (OPEN311_SINK, incident_id, version, at),
                )
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    # reading, for operators and tests

    def delivered(self, sink: str | None = None) -> list[dict[str, Any]]:
        return self._rows("delivered", sink)

    def failed(self, sink: str | None = None) -> list[dict[str, Any]]:
        return self._rows("failed", sink)

    def open311_requests(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM open311 ORDER BY at, incident_id").fetchall()
        return [dict(row) for row in rows]

    def _rows(self, table: str, sink: str | None) -> list[dict[str, Any]]:
        query = f"SELECT * FROM {table}"
        args: tuple[Any, ...] = ()
        if sink is not None:
            query += " WHERE sink = ?"
            args = (sink,)
        rows = self._db.execute(query + " ORDER BY at, rowid", args).fetchall()
        return [dict(row) for row in rows]


# ----------------------------------------------------------------------------------- sinks


@dataclass
class _Job:
    """One event for one sink."""

    event: dict[str, Any]
    raw: bytes
    incident_id: str
    version: int
    done: asyncio.Future[None] = field(repr=False)


@dataclass
class _Outcome:
    ok: bool
    attempts: int
    error: str = ""
    body: bytes = b""  # the receiver's answer, when ok


class _Sink:
    """A named destination with its own queue: its events one at a time, in order."""

    def __init__(self, name: str, url: str, notifier: Notifier) -> None:
        self.name = name
        self.url = url
        self.notifier = notifier
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._serve(), name=f"notify-sink-{self.name}")

    async def _serve(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self.deliver(job)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the state file failed: stop, commit nothing past
                if not job.done.done():
                    job.done.set_exception(exc)
                raise
            if not job.done.done():
                job.done.set_result(None)

    async def deliver(self, job: _Job) -> None:
        raise NotImplementedError

    async def post(self, job: _Job, data: bytes, headers: Mapping[str, str]) -> _Outcome:
        """POST until a 2xx, a final error, or `max_attempts` attempts."""
        config = self.notifier.config
        timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        session = self.notifier.session
        assert session is not None
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                async with session.post(
                    self.url, data=data, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    answer = await read_bounded(response, MAX_ANSWER_BYTES)
                    if 200 <= response.status < 300:
                        return _Outcome(True, attempt, body=answer)
                    error = f"HTTP {response.status}{_detail(answer)}"
                    retryable = response.status == 429 or response.status >= 500
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except TimeoutError:
                error, retryable = f"timeout after {config.timeout_s:g} s", True
            except aiohttp.ClientError as exc:
                error, retryable = f"{type(exc).__name__}: {exc}", True
            error = error.replace(self.url, "<url>")  # a webhook URL may hold a secret
            if not retryable or attempt >= config.max_attempts:
                return _Outcome(False, attempt, error=error)
            delay = backoff_delay(
                attempt,
                config.backoff_initial_s,
                config.backoff_max_s,
                self.notifier.rng,
                retry_after,
            )
            log.warning(
                logfmt(
                    "delivery_retry",
                    sink=self.name,
                    incident_id=job.incident_id,
                    version=job.version,
                    attempt=attempt,
                    error=error,
                    retry_in_s=f"{delay:.3f}",
                )
            )
            await asyncio.sleep(delay)

    def failed(self, job: _Job, outcome: _Outcome, body: bytes) -> None:
        self.notifier.state.record_failed(
            self.name, job.incident_id, job.version, outcome.attempts, outcome.error, body
        )
        log.error(
            logfmt(
                "delivery_failed",
                sink=self.name,
                incident_id=job.incident_id,
                version=job.version,
                attempts=outcome.attempts,
                error=outcome.error,
            )
        )


class _WebhookSink(_Sink):
    def __init__(self, webhook: WebhookConfig, notifier: Notifier) -> None:
        super().__init__(webhook.name, webhook.url, notifier)
        self.webhook = webhook

    def wants(self, event: Mapping[str, Any]) -> bool:
        return routes(self.webhook, event)

    async def deliver(self, job: _Job) -> None:
        state = self.notifier.state
        if state.settled(self.name, job.incident_id, job.version):
            log.info(
                logfmt(
                    "delivery_skipped",
                    sink=self.name,
                    incident_id=job.incident_id,
                    version=job.version,
                    reason="already_settled",
                )
            )
            return
        if self.webhook.format == "slack":
            body = orjson.dumps(slack_message(job.event))
        else:
            body = job.raw  # the contract event exactly as consumed
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{job.incident_id}:{job.version}",
            "User-Agent": USER_AGENT,
        }
        outcome = await self.post(job, body, headers)
        if not outcome.ok:
            self.failed(job, outcome, body)
            return
        state.record_delivered(self.name, job.incident_id, job.version)
        log.info(
            logfmt(
                "delivered",
                sink=self.name,
                incident_id=job.incident_id,
                version=job.version,
                event_type=job.event.get("event", ""),
                attempts=outcome.attempts,
            )
        )


class _Open311Sink(_Sink):
    def __init__(self, open311: Open311Config, api_key: str | None, notifier: Notifier) -> None:
        super().__init__(OPEN311_SINK, open311.endpoint.rstrip("/") + "/requests.json", notifier)
        self.open311 = open311
        self._api_key = api_key

    def wants(self, event: Mapping[str, Any]) -> bool:
        return open311_service_code(self.open311, event) is not None

    async def deliver(self, job: _Job) -> None:
        state = self.notifier.state
        if state.open311_settled(job.incident_id):
            log.info(
                logfmt(
                    "open311_skipped",
                    incident_id=job.incident_id,
                    version=job.version,
                    reason="already_filed",
                )
            )
            return
        service_code = open311_service_code(self.open311, job.event)
        assert service_code is not None
        fields = open311_post(
            job.event,
            service_code,
            jurisdiction_id=self.open311.jurisdiction_id,
            api_key=self._api_key,
        )
        data = urllib.parse.urlencode(fields).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        outcome = await self.post(job, data, headers)
        if not outcome.ok:
            kept = {key: value for key, value in fields.items() if key != "api_key"}
            self.failed(job, outcome, urllib.parse.urlencode(kept).encode())
            return
        service_request_id, token = _georeport_answer(outcome.body)
        state.record_open311(job.incident_id, job.version, service_request_id, token)
        line = logfmt(
            "open311_filed",
            incident_id=job.incident_id,
            version=job.version,
            service_code=service_code,
            service_request_id=service_request_id or "",
            token=token or "",
            attempts=outcome.attempts,
        )
        if service_request_id is None and token is None:
            log.warning(line + " warning=no_id_in_answer")
        else:
            log.info(line)


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of a response's body; the rest is left unread (the connection is
    then closed rather than reused)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _georeport_answer(body: bytes) -> tuple[str | None, str | None]:
    """(service_request_id, token) from a GeoReport v2 answer:
    `[{"service_request_id": "..."}]`, or `[{"token": "..."}]` when the city assigns the id
    later; (None, None) when it says neither (the request was accepted all the same)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if isinstance(answer, list) and answer:
        answer = answer[0]
    if not isinstance(answer, dict):
        return None, None

    def text(key: str) -> str | None:
        value = answer.get(key)
        return None if value is None or value == "" else str(value)

    return text("service_request_id"), text("token")


def _detail(answer: bytes) -> str:
    """A short, one-line excerpt of an error answer (a GeoReport error's description)."""
    if not answer:
        return ""
    try:
        parsed = orjson.loads(answer)
        if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
            parsed = parsed[0]
        if isinstance(parsed, dict) and parsed.get("description"):
            text = str(parsed["description"])
        else:
            text = answer.decode("utf-8", "replace")
    except orjson.JSONDecodeError:
        text = answer.decode("utf-8", "replace")
    text = " ".join(text.split())[:_ERROR_DETAIL_CHARS]
    return f": {text}" if text else ""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: our own backoff it is
    return seconds if seconds >= 0 else None


# -------------------------------------------------------------------------------- notifier


class Notifier:
    """The sinks of one `[notify]` section and the state they share, without Kafka.

    `handle(raw)` routes one incident event to its sinks and returns a future that is done once
    every delivery it needs has succeeded or failed for good (already done when it needs none).
    Use as `async with Notifier(config) as notifier: await notifier.handle(raw)`.
    """

    def __init__(
        self,
        config: NotifyConfig,
        *,
        rng: random.Random | None = None,
        api_key: str | None = None,
    ) -> None:
        check_config(config)
        self.config = config
        self.rng = rng or random.Random()
        self.state = StateStore(config.state_dir)
        self.session: aiohttp.ClientSession | None = None
        self.sinks: list[_WebhookSink | _Open311Sink] = [
            _WebhookSink(webhook, self) for webhook in config.webhooks
        ]
        if config.open311 is not None:
            self.sinks.append(_Open311Sink(config.open311, api_key, self))

    async def __aenter__(self) -> Self:
        self.session = aiohttp.ClientSession()
        for sink in self.sinks:
            sink.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the sinks (a delivery under way is abandoned: not recorded, so sent again by
        the next run, with the same Idempotency-Key) and close the state file."""
        tasks = [sink.task for sink in self.sinks if sink.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sink in self.sinks:
            sink.task = None
        if self.session is not None:
            await self.session.close()
            self.session = None
        self.state.close()

    def handle(self, raw: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        event = _parse(raw)
        if event is None:
            done: asyncio.Future[Any] = loop.create_future()
            done.set_result(None)
            return done
        incident_id, version = event["incident_id"], event["version"]
        futures = []
        for sink in self.sinks:
            if sink.wants(event):
                job = _Job(event, raw, incident_id, version, loop.create_future())
                sink.queue.put_nowait(job)
                futures.append(job.done)
        return asyncio.gather(*futures)

    def check(self) -> None:
        """Raise what stopped a sink (its state could not be written)."""
        for sink in self.sinks:
            if sink.task is not None and sink.task.done() and not sink.task.cancelled():
                error = sink.task.exception()
                if error is not None:
                    raise error

    def backlog(self) -> dict[str, int]:
        return {sink.name: sink.queue.qsize() for sink in self.sinks}


def _parse(raw: bytes | None) -> dict[str, Any] | None:
    """The event, or None (logged) for a record that is not one."""
    reason = None
    event: Any = None
    if raw is None:
        reason = "empty"
    elif len(raw) > MAX_EVENT_BYTES:
        reason = "too_large"
    else:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            reason = "not_json"
    if reason is None:
        if not isinstance(event, dict):
            reason = "not_an_object"
        elif not isinstance(event.get("incident_id"), str) or not event["incident_id"]:
            reason = "no_incident_id"
        elif not isinstance(event.get("version"), int) or isinstance(event["version"], bool):
            reason = "no_version"
    if reason is not None:
        log.warning(logfmt("record_skipped", reason=reason))
        return None
    return event


# ----------------------------------------------------------------------------------- Kafka


class _Offsets:
    """Per partition, the records read and not yet settled, in offset order, and the offsets
    ready to commit (one past the last record of a settled prefix)."""

    def __init__(self) -> None:
        self.pending: dict[TopicPartition, deque[tuple[int, asyncio.Future[Any]]]] = {}
        self.ready: dict[TopicPartition, int] = {}

    def __len__(self) -> int:
        return sum(len(records) for records in self.pending.values())

    def add(self, tp: TopicPartition, offset: int, done: asyncio.Future[Any]) -> None:
        self.pending.setdefault(tp, deque()).append((offset, done))

    def advance(self) -> None:
        """Move settled prefixes to `ready`. A record whose outcome could not be recorded
        stops its partition there (Notifier.check() raises its error)."""
        for tp, records in self.pending.items():
            while records and records[0][1].done():
                done = records[0][1]
                if done.cancelled() or done.exception() is not None:
                    break
                offset, _ = records.popleft()
                self.ready[tp] = offset + 1

    def drop(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self.pending.pop(tp, None)
            self.ready.pop(tp, None)


async def _commit(consumer: AIOKafkaConsumer, offsets: _Offsets) -> None:
    offsets.advance()
    if not offsets.ready:
        return
    ready = dict(offsets.ready)
    try:
        await consumer.commit(ready)
    except KafkaError as exc:  # a rebalance under way: kept, tried again next time
        log.warning(logfmt("commit_failed", error=f"{type(exc).__name__}: {exc}"))
        return
    for tp, offset in ready.items():
        if offsets.ready.get(tp) == offset:
            del offsets.ready[tp]


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, consumer: AIOKafkaConsumer, offsets: _Offsets) -> None:
        self.consumer = consumer
        self.offsets = offsets

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Commit what is settled while the partitions are still ours; records still pending
        # are read again by their next owner (and not sent twice where this state is shared).
        with contextlib.suppress(Exception):
            await _commit(self.consumer, self.offsets)
        self.offsets.drop(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        partitions = ",".join(sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        log.info(logfmt("partitions_assigned", partitions=partitions or "none"))


async def run_notify(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    consumer_options: Mapping[str, Any] | None = None,
    rng: random.Random | None = None,
) -> None:
    """Deliver incident events until `stop` is set (forever without one).

    `consumer_options` are extra AIOKafkaConsumer options (tests shorten the group timeouts).
    Raises ConfigError for a configuration it cannot run, KafkaConnectionError when the
    brokers cannot be reached, and what a sink could not record (nothing committed past it).
    """
    notify = settings.notify
    check_config(notify)
    api_key = open311_api_key(notify.open311)
    stop = stop or asyncio.Event()
    topic = settings.topics.incidents
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.brokers,
        "client_id": f"{settings.kafka.client_id}-notify",
        "group_id": notify.consumer_group,
        "enable_auto_commit": False,
        # a new group starts from the oldest retained event: an alert late beats none
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 1_000,
        **kafka_client_options(settings),
        **(consumer_options or {}),
    }
    consumer = AIOKafkaConsumer(**options)
    offsets = _Offsets()
    consumer.subscribe([topic], listener=_Rebalance(consumer, offsets))
    async with Notifier(notify, rng=rng, api_key=api_key) as notifier:
        if notify.open311 is not None and api_key is None:
            log.warning(logfmt("open311_no_api_key", hint=f"{API_KEY_VARIABLE} or api_key_file"))
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        log.info(
            logfmt(
                "notify_started",
                topic=topic,
                group=notify.consumer_group,
                sinks=",".join(sink.name for sink in notifier.sinks),
                state=str(notifier.state.path),
            )
        )
        paused = False
        try:
            while not stop.is_set():
                notifier.check()
                pending = len(offsets)
                if not paused and pending >= MAX_PENDING:
                    consumer.pause(*consumer.assignment())
                    paused = True
                    log.warning(logfmt("notify_paused", pending=pending, **notifier.backlog()))
                elif paused and pending < MAX_PENDING // 2:
                    consumer.resume(*consumer.assignment())
                    paused = False
                    log.info(logfmt("notify_resumed", pending=pending))
                batch = await consumer.getmany(
                    timeout_ms=POLL_TIMEOUT_MS, max_records=POLL_MAX_RECORDS
                )
                for tp, records in batch.items():
                    for record in records:
                        offsets.add(tp, record.offset, notifier.handle(record.value))
                await _commit(consumer, offsets)
            # Stopping: no more reads; the deliveries under way get `timeout_s` to finish
            # (and be committed), what is left after that is read again by the next run.
            deadline = asyncio.get_running_loop().time() + notify.timeout_s
            while len(offsets) and asyncio.get_running_loop().time() < deadline:
                notifier.check()
                await asyncio.sleep(0.05)
                await _commit(consumer, offsets)
        finally:
            try:
                await _commit(consumer, offsets)
            finally:
                await consumer.stop()
                log.info(logfmt("notify_stopped", unsettled=len(offsets)))


def run(settings: Settings) -> int:
    """`geoincident notify`: run until SIGINT/SIGTERM. 0 when stopped, 2 for a configuration
    it cannot run, 1 when the brokers cannot be reached, 70 when a delivery's outcome could not
    be recorded (nothing is committed past it; a restart delivers it again)."""

    started = time.monotonic()
    try:
        run_until_signalled(lambda stop: run_notify(settings, stop=stop))
    except ConfigError as error:
        print(f"geoincident notify: {error}", file=sys.stderr)
        return 2
    except KafkaConnectionError as error:
        print(f"geoincident notify: broker {settings.kafka.brokers}: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - reported, and a restart takes it from there
        log.exception(logfmt("notify_failed", error=f"{type(error).__name__}: {error}"))
        return 70
    log.info(logfmt("notify_exit", ran_s=f"{time.monotonic() - started:.1f}"))
    return 0
