"""`geoincident notify` without a broker: routes, webhook delivery with retries, the failed
table, deduplication across restarts and Open311, against real local HTTP servers."""

from __future__ import annotations

import asyncio
import logging
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from geoincident.stream.config import ConfigError, NotifyConfig, Open311Config, WebhookConfig
from geoincident.stream.formats import open311_post, slack_message
from geoincident.stream.notify import (
    API_KEY_VARIABLE,
    OPEN311_SINK,
    Notifier,
    StateStore,
    backoff_delay,
    check_config,
    open311_api_key,
    open311_service_code,
    routes,
)
from tests.builders import SPOT, ring, run

# ------------------------------------------------------------------------------ receivers


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


Script = Callable[["Receiver", bytes, dict[str, str]], "int | tuple[int, bytes]"]


@dataclass
class Receiver:
    """A local HTTP server on a free port that records every request and answers what its
    `script` says: a status, or (status, body)."""

    script: Script = lambda receiver, body, headers: 200  # noqa: E731
    delay_s: float = 0.0  # before answering (longer than a timeout: a hung receiver)
    requests: list[Received] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        answer = self.script(self, body, headers)
        status, text = answer if isinstance(answer, tuple) else (answer, b"")
        self.requests.append(Received(request.path, headers, body, status))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(status=status, body=text, content_type="application/json")

    def ok(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def tries(self, key: str) -> int:
        return sum(1 for r in self.requests if r.key == key)


def fails_first(count: int, status: int = 500) -> Script:
    """`status` for the first `count` requests of each Idempotency-Key, then 200."""

    def script(receiver: Receiver, body: bytes, headers: dict[str, str]) -> int:
        return status if receiver.tries(headers.get("Idempotency-Key", "")) < count else 200

    return script


def always(status: int) -> Script:
    return lambda receiver, body, headers: status


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    started: list[Receiver] = []

    async def make(script: Script | None = None, delay_s: float = 0.0) -> Receiver:
        receiver = Receiver(delay_s=delay_s) if script is None else Receiver(script, delay_s)
        started.append(await receiver.start())
        return receiver

    yield make
    for receiver in started:
        await receiver.stop()


# --------------------------------------------------------------------------------- events


def real_events() -> list[bytes]:
    """Incident events from the detector: one streetlight incident (opened, then updates) and
    one pothole incident, as the worker produces them."""
    reports = ring(8, 30) + ring(
        5, 30, centre=(SPOT[0] + 0.01, SPOT[1]), prefix="q", category="pothole", start_minute=2
    )
    return [event.to_json() for event in run(reports)]


EVENTS = real_events()
OPENED = orjson.loads(EVENTS[0])
assert OPENED["event"] == "opened" and OPENED["kind"] == "local"


def event(**changes: Any) -> dict[str, Any]:
    body = dict(OPENED)
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def raw(**changes: Any) -> bytes:
    return orjson.dumps(event(**changes))


SURGE = event(
    incident_id="srg-0000000000000001",
    kind="surge",
    surge_id=...,
    surge={"region": "8628d550fffffff", "regions": ["8628d550fffffff"], "ratio": 12.0},
)
IN_SURGE = event(surge_id="srg-0000000000000001")


def config(tmp_path, *webhooks: WebhookConfig, **options: Any) -> NotifyConfig:
    values: dict[str, Any] = {
        "state_dir": str(tmp_path / "notify-state"),
        "timeout_s": 2.0,
        "max_attempts": 4,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.04,
        "webhooks": list(webhooks),
    }
    values.update(options)
    return NotifyConfig(**values)


def hook(name: str, url: str, **filters: Any) -> WebhookConfig:
    return WebhookConfig(name=name, url=url, **filters)


# --------------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("filters", "the_event", "expected"),
    [
        ({}, event(), True),
        ({}, SURGE, True),  # empty kinds: surges too
        ({"kinds": ["local"]}, event(), True),
        ({"kinds": ["local"]}, SURGE, False),
        ({"kinds": ["surge"]}, SURGE, True),
        ({"kinds": ["surge"]}, event(), False),
        ({"kinds": ["local", "surge"]}, SURGE, True),
        ({"events": ["opened"]}, event(), True),
        ({"events": ["opened"]}, event(event="updated", version=2), False),
        ({"events": ["resolved"]}, event(event="resolved", resolved_reason="quiet"), True),
        ({"categories": ["streetlight_out"]}, event(), True),
        ({"categories": ["pothole", "gas_leak"]}, event(), False),
        ({"jurisdictions": ["north"]}, event(jurisdiction="north"), True),
        ({"jurisdictions": ["north"]}, event(jurisdiction="south"), False),
        ({"jurisdictions": ["north"]}, event(jurisdiction=None), False),
        ({"jurisdictions": ["north"]}, SURGE, False),  # a surge's jurisdiction is null
        # every non-empty filter must match
        (
            {"kinds": ["local"], "events": ["opened"], "categories": ["streetlight_out"]},
            event(),
            True,
        ),
        ({"kinds": ["local"], "events": ["opened"], "categories": ["pothole"]}, event(), False),
        # surge members: filed under their surge unless the sink wants them separately
        ({}, IN_SURGE, False),
        ({"surge_members": "no"}, IN_SURGE, False),
        ({"surge_members": "separately"}, IN_SURGE, True),
        ({"surge_members": "no"}, event(surge_id=None), True),
        ({"surge_members": "no"}, SURGE, True),  # the surge's own events
        ({"surge_members": "no", "kinds": ["surge"]}, SURGE, True),
        ({"surge_members": "separately", "categories": ["pothole"]}, IN_SURGE, False),
        ({"surge_members": "separately", "kinds": ["surge"]}, IN_SURGE, False),
        ({"surge_members": "no"}, event(event="resolved", surge_id="srg-1"), False),
    ],
)
def test_routes(filters, the_event, expected):
    assert routes(hook("h", "http://127.0.0.1:1/", **filters), the_event) is expected


@pytest.mark.parametrize(
    ("codes", "the_event", "expected"),
    [
        ({"streetlight_out": "SL-1"}, event(), "SL-1"),
        ({"streetlight_out": "SL-1"}, event(surge_id="srg-1"), "SL-1"),  # each one is fixed
        ({"pothole": "PH"}, event(), None),  # a category the map does not name
        ({}, event(), "streetlight_out"),  # an empty map: every category, its own name
        ({}, event(event="updated", version=2), None),
        ({}, event(event="resolved", version=3), None),
        ({}, SURGE, None),
    ],
)
def test_open311_service_code(codes, the_event, expected):
    open311 = Open311Config(endpoint="http://127.0.0.1:1", service_codes=codes)
    assert open311_service_code(open311, the_event) == expected


async def test_routes_through_the_notifier(tmp_path, receivers):
    everything, surges, separately = await receivers(), await receivers(), await receivers()
    cfg = config(
        tmp_path,
        hook("all", everything.url()),
        hook("surges", surges.url(), kinds=["surge"]),
        hook("separately", separately.url(), surge_members="separately"),
    )
    async with Notifier(cfg) as notifier:
        for body in (raw(), orjson.dumps(SURGE), orjson.dumps(IN_SURGE | {"version": 2})):
            await notifier.handle(body)
    keys = {
        "all": [r.key for r in everything.requests],
        "surges": [r.key for r in surges.requests],
        "separately": [r.key for r in separately.requests],
    }
    local, surge = f"{OPENED['incident_id']}:1", f"{SURGE['incident_id']}:1"
    member = f"{OPENED['incident_id']}:2"
    assert keys == {
        "all": [local, surge],
        "surges": [surge],
        "separately": [local, surge, member],
    }


def test_backoff_doubles_is_capped_and_jittered():
    rng = random.Random(7)
    delays = [backoff_delay(n, 1.0, 10.0, rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        base = min(10.0, 2.0 ** (n - 1))
        assert base / 2 <= delay <= base
    assert len(set(delays)) == len(delays)  # jittered
    assert backoff_delay(500, 1.0, 10.0, rng) <= 10.0  # no overflow
    # the same seed, the same waits
    assert [backoff_delay(n, 1.0, 10.0, random.Random(7)) for n in (1,)] == delays[:1]
    # a Retry-After lengthens the wait, up to the cap
    assert backoff_delay(1, 1.0, 10.0, rng, retry_after_s=4.0) == 4.0
    assert backoff_delay(1, 1.0, 10.0, rng, retry_after_s=60.0) == 10.0


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="notify.webhooks.1.name: 'a' is used twice"):
        check_config(config(tmp_path, hook("a", "http://x/"), hook("a", "http://y/")))
    with pytest.raises(ConfigError, match="Open311 sink's name"):
        check_config(config(tmp_path, hook(OPEN311_SINK, "http://x/")))
    with pytest.raises(ConfigError, match="nothing to deliver to"):
        check_config(config(tmp_path))


# ------------------------------------------------------------------------------- webhooks


async def test_retries_until_one_copy_arrives_with_one_idempotency_key(tmp_path, receivers):
    flaky = await receivers(fails_first(2, 500))
    cfg = config(tmp_path, hook("flaky", flaky.url()))
    events = EVENTS[:3]
    async with Notifier(cfg, rng=random.Random(1)) as notifier:
        await asyncio.gather(*(notifier.handle(body) for body in events))
        delivered = notifier.state.delivered("flaky")
        assert notifier.state.failed() == []
    keys = [f"{e['incident_id']}:{e['version']}" for e in map(orjson.loads, events)]
    # three tries each (500, 500, 200), all with the event's key, exactly one success each
    assert [r.key for r in flaky.requests] == [k for k in keys for _ in range(3)]
    assert [r.status for r in flaky.requests] == [500, 500, 200] * 3
    assert [r.key for r in flaky.ok()] == keys
    # the contract event exactly as consumed, as JSON
    assert [r.body for r in flaky.ok()] == events
    assert all(r.headers["Content-Type"] == "application/json" for r in flaky.requests)
    assert [(d["incident_id"], d["version"]) for d in delivered] == [
        (k.split(":")[0], int(k.split(":")[1])) for k in keys
    ]


async def test_a_dead_receiver_ends_in_the_failed_table_and_blocks_nobody(
    tmp_path, receivers, caplog
):
    caplog.set_level(logging.INFO, logger="geoincident.notify")
    dead, alive = await receivers(always(500)), await receivers()
    cfg = config(
        tmp_path,
        hook("dead", dead.url()),
        hook("alive", alive.url()),
        max_attempts=3,
        backoff_initial_s=0.1,
        backoff_max_s=0.2,
    )
    events = EVENTS[:3]
    async with Notifier(cfg) as notifier:
        done = [notifier.handle(body) for body in events]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(alive.ok()) < len(events) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        # every event reached the live receiver while the dead one was still being retried
        assert len(alive.ok()) == len(events)
        assert not all(d.done() for d in done)
        await asyncio.gather(*done)
        failed = notifier.state.failed("dead")
        assert notifier.state.failed("alive") == []
        assert len(notifier.state.delivered("alive")) == len(events)
        assert notifier.state.delivered("dead") == []
    assert len(dead.requests) == 3 * len(events)
    assert [(f["incident_id"], f["version"], f["attempts"]) for f in failed] == [
        (e["incident_id"], e["version"], 3) for e in map(orjson.loads, events)
    ]
    assert all(f["last_error"] == "HTTP 500" for f in failed)
    assert [f["body"] for f in failed] == events  # what an operator can send again
    lines = [r.getMessage() for r in caplog.records if "event=delivery_failed" in r.getMessage()]
    first = orjson.loads(events[0])
    assert lines[0] == (
        f"event=delivery_failed sink=dead incident_id={first['incident_id']} "
        f'version={first["version"]} attempts=3 error="HTTP 500"'
    )
    assert len(lines) == len(events)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_4xx_fails_at_once(tmp_path, receivers, status):
    receiver = await receivers(lambda r, b, h: (status, b'{"error":"no such channel"}'))
    async with Notifier(config(tmp_path, hook("h", receiver.url()))) as notifier:
        await notifier.handle(EVENTS[0])
        (failed,) = notifier.state.failed()
    assert len(receiver.requests) == 1
    assert failed["attempts"] == 1
    assert failed["last_error"] == f'HTTP {status}: {{"error":"no such channel"}}'


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_429_and_5xx_are_retried(tmp_path, receivers, status):
    receiver = await receivers(fails_first(1, status))
    async with Notifier(config(tmp_path, hook("h", receiver.url()))) as notifier:
        await notifier.handle(EVENTS[0])
        assert len(notifier.state.delivered()) == 1
    assert [r.status for r in receiver.requests] == [status, 200]


async def test_timeouts_and_refused_connections_are_retried_then_fail(tmp_path, receivers, caplog):
    caplog.set_level(logging.INFO, logger="geoincident.notify")
    hung = await receivers(delay_s=2.0)
    closed = await receivers()
    refused_url = closed.url("/services/T000/B000/secret-token")
    await closed.stop()  # nothing listens there any more
    cfg = config(
        tmp_path, hook("hung", hung.url()), hook("gone", refused_url), timeout_s=0.2, max_attempts=2
    )
    async with Notifier(cfg) as notifier:
        await notifier.handle(EVENTS[0])
        failed = {f["sink"]: f for f in notifier.state.failed()}
    assert len(hung.requests) == 2
    assert failed["hung"]["attempts"] == 2
    assert failed["hung"]["last_error"] == "timeout after 0.2 s"
    assert failed["gone"]["attempts"] == 2
    assert "ClientConnectorError" in failed["gone"]["last_error"]
    assert "secret-token" not in caplog.text  # a webhook URL is never logged


async def test_slack_format(tmp_path, receivers):
    receiver = await receivers()
    async with Notifier(config(tmp_path, hook("chat", receiver.url(), format="slack"))) as n:
        await n.handle(EVENTS[0])
    (request,) = receiver.requests
    assert orjson.loads(request.body) == slack_message(orjson.loads(EVENTS[0]))
    assert request.key == f"{OPENED['incident_id']}:1"
    assert request.headers["Content-Type"] == "application/json"


async def test_a_redelivered_event_is_sent_once_also_after_a_restart(tmp_path, receivers):
    receiver = await receivers()
    refusing = await receivers(always(400))
    cfg = config(tmp_path, hook("h", receiver.url()), hook("refusing", refusing.url()))
    first, second = EVENTS[0], EVENTS[1]
    # the worker produced the first event twice (only emitted_at differs)
    again = raw(emitted_at="2030-01-01T00:00:00.000Z")
    async with Notifier(cfg) as notifier:
        await asyncio.gather(notifier.handle(first), notifier.handle(again))
        await notifier.handle(first)
    assert [r.body for r in receiver.requests] == [first]
    assert len(refusing.requests) == 1
    async with Notifier(cfg) as notifier:  # a restart: same state_dir
        for body in (first, again, second):
            await notifier.handle(body)
        assert len(notifier.state.delivered("h")) == 2
    assert [r.body for r in receiver.requests] == [first, second]
    # failed for good is settled too: not retried by a redelivery
    assert len(refusing.requests) == 2


async def test_records_that_are_not_events_are_skipped(tmp_path, receivers, caplog):
    caplog.set_level(logging.INFO, logger="geoincident.notify")
    receiver = await receivers()
    async with Notifier(config(tmp_path, hook("h", receiver.url()))) as notifier:
        for body in (b"not json", b"[1]", b'{"event":"opened"}', b'{"incident_id":"x"}'):
            await notifier.handle(body)
    assert receiver.requests == []
    assert caplog.text.count("event=record_skipped") == 4


async def test_an_unwritable_state_stops_the_notifier(tmp_path, receivers):
    receiver = await receivers()
    async with Notifier(config(tmp_path, hook("h", receiver.url()))) as notifier:
        notifier.state._db.close()  # the state file is gone from under it
        with pytest.raises(Exception, match="closed database"):
            await notifier.handle(EVENTS[0])
        await asyncio.sleep(0)
        with pytest.raises(Exception, match="closed database"):
            notifier.check()
        notifier.state = StateStore(tmp_path / "other")  # so that close() can close it


# -------------------------------------------------------------------------------- Open311


def georeport_server(service_request_id: str = "311-1") -> Script:
    """503 to the first request, then a GeoReport v2 answer with the id."""

    def script(receiver: Receiver, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if not receiver.requests:
            return 503, b'[{"code":503,"description":"try later"}]'
        answer = [{"service_request_id": service_request_id, "service_notice": "thanks"}]
        return 200, orjson.dumps(answer)

    return script


async def test_open311_one_request_per_incident(tmp_path, receivers, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="geoincident.notify")
    monkeypatch.delenv(API_KEY_VARIABLE, raising=False)
    city = await receivers(georeport_server())
    open311 = Open311Config(
        endpoint=city.url("/georeport/v2/"),
        jurisdiction_id="city.example.org",
        service_codes={"streetlight_out": "SL-1"},
    )
    cfg = config(tmp_path, open311=open311)
    events = EVENTS  # the streetlight incident (opened, updates) and an unmapped pothole
    async with Notifier(cfg, api_key="s3cret-key") as notifier:
        for body in events:
            await notifier.handle(body)
        await notifier.handle(EVENTS[0])  # a redelivery of the opened event
        filed = notifier.state.open311_requests()
    assert [r.status for r in city.requests] == [503, 200]
    assert {r.path for r in city.requests} == {"/georeport/v2/requests.json"}
    form = dict(urllib.parse.parse_qsl(city.requests[1].body.decode()))
    assert form == open311_post(
        OPENED, "SL-1", jurisdiction_id="city.example.org", api_key="s3cret-key"
    )
    assert form["service_code"] == "SL-1"
    assert form["api_key"] == "s3cret-key"
    assert form["jurisdiction_id"] == "city.example.org"
    assert (form["lat"], form["long"]) == (str(OPENED["lat"]), str(OPENED["lon"]))
    assert form["description"]
    assert city.requests[1].headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert [(f["incident_id"], f["version"], f["service_request_id"]) for f in filed] == [
        (OPENED["incident_id"], 1, "311-1")
    ]
    assert "s3cret-key" not in caplog.text
    assert "service_request_id=311-1" in caplog.text

    # after a restart: a second opened of the same incident (a redelivery) files nothing
    async with Notifier(cfg, api_key="s3cret-key") as notifier:
        await notifier.handle(raw(emitted_at="2030-01-01T00:00:00.000Z"))
    assert len(city.requests) == 2


async def test_open311_token_answer_every_category_and_failure(tmp_path, receivers):
    def script(receiver: Receiver, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form["service_code"] == "pothole":
            return 400, b'[{"code":400,"description":"service_code not found"}]'
        return 201, b'[{"token":"12345"}]'

    city = await receivers(script)
    cfg = config(tmp_path, open311=Open311Config(endpoint=city.url("/open311")))
    async with Notifier(cfg, api_key="k") as notifier:
        for body in EVENTS:
            await notifier.handle(body)
        filed = notifier.state.open311_requests()
        (failed,) = notifier.state.failed(OPEN311_SINK)
    # an empty map: every category, under its own name
    codes = [dict(urllib.parse.parse_qsl(r.body.decode()))["service_code"] for r in city.requests]
    assert sorted(codes) == ["pothole", "streetlight_out"]
    assert [(f["service_request_id"], f["token"]) for f in filed] == [(None, "12345")]
    assert failed["attempts"] == 1
    assert failed["last_error"] == "HTTP 400: service_code not found"
    assert b"api_key" not in failed["body"]  # the key is never stored
    assert b"service_code=pothole" in failed["body"]


def test_open311_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEY_VARIABLE, raising=False)
    assert open311_api_key(None) is None
    assert open311_api_key(Open311Config(endpoint="http://x")) is None
    key_file = tmp_path / "key"
    key_file.write_text("\nfrom-file\n")
    with_file = Open311Config(endpoint="http://x", api_key_file=str(key_file))
    assert open311_api_key(with_file) == "from-file"
    monkeypatch.setenv(API_KEY_VARIABLE, "from-env")
    assert open311_api_key(with_file) == "from-env"
    monkeypatch.delenv(API_KEY_VARIABLE)
    missing = Open311Config(endpoint="http://x", api_key_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="notify.open311.api_key_file: cannot read"):
        open311_api_key(missing)


# ------------------------------------------------------------------------------ input limits


async def test_an_oversized_record_is_skipped_unparsed(tmp_path, receivers, caplog, monkeypatch):
    from geoincident.stream import notify as notify_module

    caplog.set_level(logging.INFO, logger="geoincident.notify")
    receiver = await receivers()
    huge = raw(padding="x" * notify_module.MAX_EVENT_BYTES)
    async with Notifier(config(tmp_path, hook("h", receiver.url()))) as notifier:
        with monkeypatch.context() as patch:
            patch.setattr(notify_module.orjson, "loads", lambda *_: pytest.fail("parsed"))
            await notifier.handle(huge)
        await notifier.handle(EVENTS[0])
    assert "event=record_skipped reason=too_large" in caplog.text
    assert len(receiver.requests) == 1  # the event after it went out


async def test_a_receivers_answer_is_read_up_to_64_kib(tmp_path, receivers):
    from geoincident.stream.notify import MAX_ANSWER_BYTES, read_bounded

    answer = b"[" + b'{"description":"' + b"e" * (4 * MAX_ANSWER_BYTES) + b'"}]'
    receiver = await receivers(lambda r, body, headers: (500, answer))
    async with aiohttp.ClientSession() as session:
        async with session.post(receiver.url()) as response:
            assert len(await read_bounded(response, MAX_ANSWER_BYTES)) == MAX_ANSWER_BYTES
        async with session.post(receiver.url()) as response:
            assert await read_bounded(response, 10**9) == answer  # a short one: all of it
    # a delivery answered with it fails as any 500 does, its error cut to one line
    cfg = config(tmp_path, hook("h", receiver.url()), max_attempts=1)
    async with Notifier(cfg) as notifier:
        await notifier.handle(EVENTS[0])
        (failed,) = notifier.state.failed("h")
    assert failed["last_error"].startswith("HTTP 500: ") and len(failed["last_error"]) < 300


def test_the_api_key_file_is_bounded(tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEY_VARIABLE, raising=False)
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * (64 * 1024 + 1))
    big = Open311Config(endpoint="http://x", api_key_file=str(key_file))
    with pytest.raises(ConfigError, match=r"notify\.open311\.api_key_file: .*larger than 65,536"):
        open311_api_key(big)
