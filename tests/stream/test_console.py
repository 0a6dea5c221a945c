"""`geoincident console` without a broker: the view model, and the HTTP API through aiohttp's
test server.

Kafka is replaced only where no broker is needed: the incidents a real console would consume are
handed to `Console.ingest` as the raw record values, and the producer of actions is a list that
records (topic, key, value). Everything else (routing, tokens, CSRF checks, headers, escaping,
the SSE feed, the formats) is the code that runs in production. The real consumer and producer
are exercised in tests/integration/test_console_browser.py.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from geoincident.detectors.actions import parse_action
from geoincident.detectors.timefmt import format_ms, parse_rfc3339_ms
from geoincident.stream.config import load_settings
from geoincident.stream.console import (
    WEB_DIR,
    Console,
    IncidentView,
    build_app,
    json_bytes,
    load_tokens,
    state_of,
)

NOW = parse_rfc3339_ms("2026-11-24T12:00:00.000Z")
HOUR = 3_600_000
TOKEN = "s3cret-token-for-tests"
EVIL = '<img src=x onerror="alert(1)">'


def event(incident_id: str = "inc-00000000000000a1", version: int = 1, **fields) -> dict:
    """An incident event shaped like CONTRACT §2.2 (a local incident, five reporters)."""
    lat, lon = 47.6101726, -122.3914299
    base = {
        "schema": 1,
        "incident_id": incident_id,
        "event": "opened" if version == 1 else "updated",
        "version": version,
        "kind": "local",
        "category": "traffic_signal_out",
        "lat": lat,
        "lon": lon,
        "h3_cell": "8a28d555e067fff",
        "cells": ["8a28d555e067fff"],
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [
                    [lon - 0.001, lat - 0.001],
                    [lon + 0.001, lat - 0.001],
                    [lon + 0.001, lat + 0.001],
                    [lon - 0.001, lat - 0.001],
                ]
            ],
        },
        "radius_m": 18.2,
        "first_report_at": format_ms(NOW - 10 * 60_000),
        "validated_at": format_ms(NOW - 8 * 60_000),
        "last_report_at": format_ms(NOW - 8 * 60_000),
        "emitted_at": format_ms(NOW - 8 * 60_000 + version),
        "report_count": 5,
        "independent_reporters": 5,
        "score": 5.0,
        "confidence": 0.675,
        "report_ids": ["r-1", "r-2", "r-3", "r-4", "r-5"],
        "sources": {"app": 5},
        "jurisdiction": "Northwest",
        "status": "open",
        "surge_id": None,
    }
    base.update(fields)
    return base


def raw(e: dict) -> bytes:
    return orjson.dumps(e)


# ------------------------------------------------------------------------------ view model


def test_the_highest_version_wins_and_duplicates_change_nothing():
    view = IncidentView(clock_ms=lambda: NOW)
    assert view.apply(event(version=1))
    assert view.apply(event(version=3, independent_reporters=7))
    assert not view.apply(event(version=3, independent_reporters=7))  # a duplicate
    assert not view.apply(event(version=2, independent_reporters=6))  # older, arrived late
    assert not view.apply(event(version=1))
    assert view.get("inc-00000000000000a1")["version"] == 3
    assert view.get("inc-00000000000000a1")["independent_reporters"] == 7
    # the late version 2 has its place in the history, once
    assert [h["version"] for h in view.history("inc-00000000000000a1")] == [1, 2, 3]
    assert len(view) == 1


def test_events_without_an_id_or_an_integer_version_are_ignored():
    view = IncidentView(clock_ms=lambda: NOW)
    assert not view.apply({"version": 1})
    assert not view.apply({**event(), "version": "2"})
    assert not view.apply({**event(), "version": True})
    assert not view.apply({**event(), "incident_id": ""})
    assert len(view) == 0


def test_the_console_state_of_an_event():
    assert state_of(event()) == "new"
    assert state_of(event(status="acknowledged", acknowledged_by="d1")) == "acknowledged"
    assert state_of(event(status="acknowledged", assigned_to="crew-4")) == "assigned"
    assert state_of(event(status="open", assigned_to="crew-4")) == "assigned"
    assert state_of(event(status="resolved", assigned_to="crew-4")) == "resolved"


def test_filters_and_order():
    view = IncidentView(clock_ms=lambda: NOW)
    view.apply(event("inc-a", validated_at=format_ms(NOW - 3 * HOUR)))
    view.apply(
        event(
            "inc-b",
            2,
            category="pothole",
            status="acknowledged",
            validated_at=format_ms(NOW - HOUR),
        )
    )
    view.apply(event("inc-c", 3, jurisdiction=None, assigned_to="crew-1"))
    view.apply(
        event(
            "inc-d",
            4,
            event="resolved",
            status="resolved",
            resolved_reason="dispatcher",
            validated_at=format_ms(NOW - 2 * HOUR),
        )
    )
    ids = lambda items: [i["incident_id"] for i in items]  # noqa: E731
    assert ids(view.list()) == ["inc-c", "inc-b", "inc-d", "inc-a"]  # newest opening first
    assert ids(view.list(status=["active"])) == ["inc-c", "inc-b", "inc-a"]
    assert ids(view.list(status=["new"])) == ["inc-a"]
    assert ids(view.list(status=["open"])) == ["inc-c", "inc-a"]  # the contract's status
    assert ids(view.list(status=["assigned", "resolved"])) == ["inc-c", "inc-d"]
    assert ids(view.list(status=["all"])) == ids(view.list())
    assert ids(view.list(category=["pothole"])) == ["inc-b"]
    assert ids(view.list(jurisdiction=["-"])) == ["inc-c"]
    assert ids(view.list(jurisdiction=["Northwest"], status=["active"])) == ["inc-b", "inc-a"]
    assert view.list(category=["pothole"])[0]["state"] == "acknowledged"


def test_resolved_incidents_are_kept_for_a_day_then_dropped_for_good():
    clock = [NOW]
    view = IncidentView(clock_ms=lambda: clock[0])
    opened = event("inc-r", 1, emitted_at=format_ms(NOW - 2 * HOUR))
    resolved = event(
        "inc-r",
        2,
        event="resolved",
        status="resolved",
        resolved_reason="quiet",
        emitted_at=format_ms(NOW - 23 * HOUR),  # (an emitted_at is what counts, not arrival)
    )
    view.apply(opened)
    view.apply(resolved)
    view.apply(event("inc-open", 1))
    assert view.prune() == []
    assert view.get("inc-r")["status"] == "resolved"  # still shown 23 h on

    clock[0] = NOW + HOUR + 1
    assert view.prune() == ["inc-r"]
    assert view.get("inc-r") is None
    assert view.get("inc-open") is not None  # open incidents stay, however old
    # a late duplicate of an older version does not bring it back ...
    assert not view.apply(opened)
    assert not view.apply(resolved)
    assert view.get("inc-r") is None
    # ... a newer version (a reopen) does
    assert view.apply(event("inc-r", 3, status="open", emitted_at=format_ms(clock[0])))
    assert view.get("inc-r")["version"] == 3


def test_an_event_resolved_more_than_a_day_ago_is_not_taken_at_all():
    view = IncidentView(clock_ms=lambda: NOW)
    old = event(
        "inc-old", 5, event="resolved", status="resolved", emitted_at=format_ms(NOW - 25 * HOUR)
    )
    assert not view.apply(old)
    assert view.get("inc-old") is None
    assert not view.apply(event("inc-old", 4, emitted_at=format_ms(NOW - 26 * HOUR)))


def test_the_history_is_short():
    view = IncidentView(clock_ms=lambda: NOW, history_limit=5)
    for version in range(1, 12):
        view.apply(event(version=version))
    assert [h["version"] for h in view.history("inc-00000000000000a1")] == [7, 8, 9, 10, 11]


def test_tokens_from_the_file_and_the_environment(tmp_path: Path):
    path = tmp_path / "tokens"
    path.write_text("# dispatch room\n\n  tok-one  \n#tok-commented\ntok-two\n", encoding="utf-8")
    settings = load_settings(overrides={"console.token_file": str(path)})
    assert load_tokens(settings, environ={}) == ["tok-one", "tok-two"]
    assert load_tokens(settings, environ={"GEOINCIDENT_CONSOLE_TOKEN": "env"})[-1] == "env"
    assert load_tokens(load_settings(), environ={}) == []


# ---------------------------------------------------------------------------------- the API


class Sent(list):
    async def __call__(self, topic: str, key: bytes, value: bytes) -> None:
        self.append((topic, key, value))


def make_console(tokens=(TOKEN,), **overrides) -> tuple[Console, Sent]:
    settings = load_settings(overrides=overrides)
    sent = Sent()
    view = IncidentView(clock_ms=lambda: NOW)
    console = Console(settings, tokens=list(tokens), send=sent, view=view)
    return console, sent


@pytest.fixture
async def api():
    clients = []

    async def start(console: Console) -> TestClient:
        client = TestClient(TestServer(build_app(console)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_action(client: TestClient, body, headers=None, incident="inc-00000000000000a1"):
    return await client.post(
        f"/api/incidents/{incident}/actions",
        data=body if isinstance(body, bytes | str) else orjson.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


async def test_an_action_without_a_token_is_401_and_nothing_is_produced(api):
    console, sent = make_console()
    client = await api(console)
    response = await post_action(client, {"action": "ack"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"] == "unauthorized"
    for header in ("Basic " + TOKEN, "Bearer", "Bearer  ", TOKEN):
        response = await post_action(client, {"action": "ack"}, {"Authorization": header})
        assert response.status == 401, header
    assert sent == []


async def test_an_action_with_a_wrong_token_is_refused_and_nothing_is_produced(api):
    console, sent = make_console(tokens=(TOKEN, "another-one"))
    client = await api(console)
    for wrong in ("nope", TOKEN + "x", TOKEN[:-1], TOKEN.upper()):
        response = await post_action(client, {"action": "ack"}, bearer(wrong))
        assert response.status in (401, 403), wrong
        assert (await response.json())["error"] == "invalid_token"
    assert sent == []


async def test_with_no_token_configured_every_action_is_refused_clearly(api):
    console, sent = make_console(tokens=())
    client = await api(console)
    response = await post_action(client, {"action": "ack"}, bearer("anything"))
    assert response.status == 403
    body = await response.json()
    assert body["error"] == "actions_disabled"
    assert "GEOINCIDENT_CONSOLE_TOKEN" in body["detail"]
    assert (await (await client.get("/api/config")).json())["actions_enabled"] is False
    assert sent == []


async def test_the_right_token_produces_an_action_the_worker_accepts(api):
    console, sent = make_console()
    console.ingest(raw(event()))
    client = await api(console)
    before = format_ms(parse_rfc3339_ms(format_ms(NOW)))  # any valid time; checked below
    response = await post_action(client, {"action": "ack", "by": "d-7"}, bearer())
    assert response.status == 202
    answered = await response.json()
    assert len(sent) == 1
    topic, key, value = sent[0]
    assert topic == console.settings.topics.actions == "incident-actions"
    assert key == b"inc-00000000000000a1"
    action = parse_action(value)  # the worker's own parser
    assert action.action == "ack" and action.by == "d-7"
    assert action.incident_id == "inc-00000000000000a1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", action.at)
    assert parse_rfc3339_ms(action.at) > parse_rfc3339_ms(before)  # now, not a client's time
    assert answered == orjson.loads(value)

    # `by` defaults to "console"; an incident_id equal to the URL's is fine; a client's `at`
    # is replaced by the console's clock
    response = await post_action(
        client,
        {
            "action": "assign",
            "to": "crew-4",
            "incident_id": "inc-00000000000000a1",
            "at": "2001-01-01T00:00:00Z",
        },
        bearer(),
    )
    assert response.status == 202
    action = parse_action(sent[-1][2])
    assert (action.action, action.to, action.by) == ("assign", "crew-4", "console")
    assert not action.at.startswith("2001")


async def test_actions_the_parser_refuses_are_400_and_not_produced(api):
    console, sent = make_console()
    client = await api(console)
    for body, reason in (
        ({"action": "assign"}, "bad_action"),  # no `to`
        ({"action": "flag_report"}, "bad_action"),
        ({"action": "block"}, "bad_action"),  # neither reporter nor device
        ({"action": "explode"}, "bad_action"),
        ({"action": "ack", "by": 5}, "bad_action"),
        ({"action": "ack", "incident_id": "inc-other"}, "bad_action"),
        (b"[1, 2]", "bad_action"),
        (b"{not json", "bad_action"),
    ):
        response = await post_action(client, body, bearer())
        assert response.status == 400, body
        assert (await response.json())["error"] == reason
    assert sent == []
    response = await post_action(client, {"action": "block", "reporter": "u-9"}, bearer())
    assert response.status == 202
    assert parse_action(sent[-1][2]).reporter == "u-9"


async def test_no_cross_site_request_can_act(api):
    console, sent = make_console()
    client = await api(console)
    url = "/api/incidents/inc-00000000000000a1/actions"
    # a form post, as a foreign page could send without any preflight
    form = await client.post(url, data={"action": "ack"}, headers=bearer())
    assert form.status == 415
    plain = await client.post(
        url, data='{"action":"ack"}', headers={**bearer(), "Content-Type": "text/plain"}
    )
    assert plain.status == 415
    foreign = await post_action(
        client, {"action": "ack"}, {**bearer(), "Origin": "https://evil.example"}
    )
    assert foreign.status == 403
    assert (await foreign.json())["error"] == "cross_origin"
    null_origin = await post_action(client, {"action": "ack"}, {**bearer(), "Origin": "null"})
    assert null_origin.status == 403
    cross_site = await post_action(
        client, {"action": "ack"}, {**bearer(), "Sec-Fetch-Site": "cross-site"}
    )
    assert cross_site.status == 403
    assert sent == []
    own = f"http://{client.server.host}:{client.server.port}"
    same = await post_action(client, {"action": "ack"}, {**bearer(), "Origin": own})
    assert same.status == 202
    assert len(sent) == 1
    # no cookie is ever set, so there is nothing a browser would add by itself
    assert "Set-Cookie" not in same.headers


async def test_a_broker_that_is_away_gives_503(api):
    async def broken(topic: str, key: bytes, value: bytes) -> None:
        raise ConnectionError("broker down")

    console = Console(load_settings(), tokens=[TOKEN], send=broken)
    client = await api(console)
    response = await post_action(client, {"action": "ack"}, bearer())
    assert response.status == 503


async def test_reading_the_list_the_detail_and_the_filters(api):
    console, _ = make_console()
    console.ingest(raw(event("inc-a")))
    console.ingest(raw(event("inc-a", 2, status="acknowledged", acknowledged_by="d1")))
    console.ingest(raw(event("inc-a", 2, status="acknowledged", acknowledged_by="d1")))
    console.ingest(raw(event("inc-b", category="pothole", jurisdiction=None)))
    console.ingest(b"not json")
    client = await api(console)
    data = await (await client.get("/api/incidents")).json()
    assert data["count"] == 2
    by_id = {i["incident_id"]: i for i in data["incidents"]}
    assert by_id["inc-a"]["version"] == 2 and by_id["inc-a"]["state"] == "acknowledged"
    assert by_id["inc-b"]["category_text"] == "Pothole"
    filtered = await (await client.get("/api/incidents?category=pothole")).json()
    assert [i["incident_id"] for i in filtered["incidents"]] == ["inc-b"]
    filtered = await (await client.get("/api/incidents?jurisdiction=Northwest")).json()
    assert [i["incident_id"] for i in filtered["incidents"]] == ["inc-a"]
    filtered = await (
        await client.get("/api/incidents?jurisdiction=-&jurisdiction=Ward 3, North")
    ).json()
    assert [i["incident_id"] for i in filtered["incidents"]] == ["inc-b"]
    filtered = await (await client.get("/api/incidents?status=new")).json()
    assert [i["incident_id"] for i in filtered["incidents"]] == ["inc-b"]
    assert (await client.get("/api/incidents?status=bogus")).status == 400

    detail = await (await client.get("/api/incidents/inc-a")).json()
    assert detail["incident"]["acknowledged_by"] == "d1"
    assert [h["version"] for h in detail["history"]] == [1, 2]
    assert (await client.get("/api/incidents/inc-unknown")).status == 404
    status = await (await client.get("/api/status")).json()
    assert status["consumed"] == 5 and status["malformed"] == 1 and status["incidents"] == 2


async def test_cap_and_open311(api):
    console, _ = make_console(**{"notify.open311": {"endpoint": "https://311.example/v2"}})
    console.service_codes = {"traffic_signal_out": "TS-01"}
    console.ingest(raw(event("inc-a")))
    console.ingest(raw(event("inc-b", 3, status="resolved", event="resolved")))
    console.ingest(raw(event("srg-1", kind="surge", jurisdiction=None)))
    client = await api(console)
    cap = await client.get("/api/incidents/inc-a.cap")
    assert cap.status == 200
    assert cap.content_type == "application/cap+xml"
    text = await cap.text()
    assert "urn:oasis:names:tc:emergency:cap:1.2" in text and "inc-a" in text
    assert (await client.get("/api/incidents/inc-nope.cap")).status == 404

    requests = await (await client.get("/open311/v2/requests.json")).json()
    assert {r["service_request_id"] for r in requests} == {"inc-a", "inc-b"}  # no surges
    assert {r["service_code"] for r in requests} == {"TS-01"}
    closed = await (await client.get("/open311/v2/requests.json?status=closed")).json()
    assert [r["service_request_id"] for r in closed] == ["inc-b"]


async def test_read_protection(api):
    console, _ = make_console(**{"console.read_protected": True})
    console.ingest(raw(event()))
    client = await api(console)
    assert (await client.get("/")).status == 200  # the page holds no data
    assert (await client.get("/static/app.js")).status == 200
    assert (await client.get("/api/config")).status == 200
    for path in (
        "/api/incidents",
        "/api/incidents/inc-00000000000000a1",
        "/api/incidents/inc-00000000000000a1.cap",
        "/api/events",
        "/api/status",
        "/open311/v2/requests.json",
    ):
        assert (await client.get(path)).status == 401, path
        assert (await client.get(path, headers=bearer("wrong"))).status == 401, path
    assert (await client.get("/api/incidents", headers=bearer())).status == 200
    # unprotected by default
    open_console, _ = make_console()
    open_client = await api(open_console)
    assert (await open_client.get("/api/incidents")).status == 200


async def test_security_headers_everywhere(api):
    console, _ = make_console()
    client = await api(console)
    for path in ("/", "/static/app.js", "/api/incidents", "/api/incidents/x", "/nope"):
        response = await client.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
    assert (await client.get("/static/../console.py")).status == 404
    assert (await client.get("/static/other.js")).status == 404


async def test_tile_servers_are_allowed_for_images_only(api):
    console, _ = make_console(**{"console.tile_url": "https://tiles.example.org/{z}/{x}/{y}.png"})
    client = await api(console)
    response = await client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "img-src 'self' data: https://tiles.example.org;" in csp
    assert "connect-src 'self';" in csp
    config = await (await client.get("/api/config")).json()
    assert config["tile_url"] == "https://tiles.example.org/{z}/{x}/{y}.png"


async def test_markup_in_data_is_never_markup(api):
    """A category or jurisdiction holding markup stays text everywhere the console sends it."""
    console, _ = make_console()
    console.ingest(raw(event("inc-evil", category=EVIL, jurisdiction=EVIL, assigned_to=EVIL)))
    client = await api(console)
    html = await (await client.get("/")).text()
    assert "<img" not in html and "onerror" not in html
    for path in ("/api/incidents", "/api/incidents/inc-evil", "/open311/v2/requests.json"):
        response = await client.get(path)
        assert response.content_type == "application/json"
        body = await response.read()
        assert b"<" not in body and b">" not in body, path
        assert b"\\u003cimg" in body
        assert EVIL.encode() not in body
    listed = await (await client.get("/api/incidents")).json()
    assert listed["incidents"][0]["category"] == EVIL  # still the same text once decoded
    assert listed["incidents"][0]["jurisdiction"] == EVIL
    cap = await (await client.get("/api/incidents/inc-evil.cap")).text()
    assert "<img" not in cap and "&lt;img" in cap
    assert (
        json_bytes({"a": "</script><b>&"}) == b'{"a":"\\u003c/script\\u003e\\u003cb\\u003e\\u0026"}'
    )
    assert orjson.loads(json_bytes({"a": EVIL})) == {"a": EVIL}


def test_the_page_never_inserts_data_as_markup():
    script = (WEB_DIR / "app.js").read_text(encoding="utf-8")
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ):
        assert sink not in script, sink
    assert "textContent" in script
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    # no inline script or style: the CSP (script-src/style-src 'self') would refuse them anyway
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert "<style" not in html and " style=" not in html
    assert re.search(r"\son[a-z]+\s*=", html) is None  # no inline event handlers
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html  # no CDN


async def test_the_event_feed_pushes_new_versions_only(api):
    console, _ = make_console()
    console.ingest(raw(event("inc-a")))
    client = await api(console)
    response = await client.get("/api/events")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")

    async def next_message() -> tuple[str, dict]:
        kind, data = "message", None
        while True:
            line = (await asyncio.wait_for(response.content.readline(), 5)).decode().rstrip("\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = orjson.loads(line[5:])
            elif line == "" and data is not None:
                return kind, data

    assert await next_message() == ("status", {"caught_up": False})
    console.ingest(raw(event("inc-a", 1)))  # a duplicate: not pushed
    console.ingest(raw(event("inc-a", 2, status="acknowledged", acknowledged_by=EVIL)))
    kind, data = await next_message()
    assert kind == "incident"
    assert (data["incident_id"], data["version"], data["state"]) == ("inc-a", 2, "acknowledged")
    assert data["acknowledged_by"] == EVIL
    console.ingest_refusal(
        orjson.dumps(
            {
                "reason": "already_resolved",
                "detail": "inc-a is resolved",
                "raw": '{"incident_id":"inc-a","action":"resolve"}',
            }
        )
    )
    assert await next_message() == (
        "refused",
        {
            "incident_id": "inc-a",
            "action": "resolve",
            "at": None,
            "reason": "already_resolved",
            "detail": "inc-a is resolved",
        },
    )
    console.set_caught_up()
    assert await next_message() == ("status", {"caught_up": True})
    console.ingest(raw(event("inc-z", 2, status="resolved", emitted_at=format_ms(NOW - HOUR))))
    assert (await next_message())[1]["incident_id"] == "inc-z"
    console.view.clock_ms = lambda: NOW + 23 * HOUR + 1
    console.prune()
    assert await next_message() == ("gone", {"incident_ids": ["inc-z"]})
    response.close()


# ------------------------------------------------------------------------------ input limits


async def test_an_action_body_over_64_kib_is_refused_unread_and_nothing_is_produced(api):
    from geoincident.detectors.actions import MAX_ACTION_BYTES

    console, sent = make_console()
    console.ingest(raw(event()))
    client = await api(console)
    body = {"action": "ack", "by": "d-7", "note": "n" * 4000}
    # near the limit (the console adds `at` and `incident_id` before the worker's parser
    # checks the same limit)
    padding = "p" * (MAX_ACTION_BYTES - 5000)
    near = orjson.dumps({**body, "pad": padding})
    assert (await post_action(client, near, bearer())).status == 202
    over = orjson.dumps({**body, "pad": "p" * MAX_ACTION_BYTES})
    response = await post_action(client, over, bearer())
    assert response.status == 413
    assert len(sent) == 1


def test_an_oversized_record_on_the_incidents_topic_is_skipped_unparsed(monkeypatch):
    from geoincident.stream import console as console_module

    console, _ = make_console()
    huge = raw(event(padding="x" * console_module.MAX_EVENT_BYTES))
    monkeypatch.setattr(console_module.orjson, "loads", lambda *_: pytest.fail("parsed"))
    assert console.ingest(huge) is False
    console.ingest_refusal(huge)  # the actions dead-letter topic: the same bound
    monkeypatch.undo()
    assert console.malformed == 1 and len(console.view) == 0
    assert console.ingest(raw(event())) is True
