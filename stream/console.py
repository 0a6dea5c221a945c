"""`geoincident console`: the dispatchers' live web page and its JSON API, in a process of its own.

It reads the incidents topic from the start with a plain consumer (no consumer group, nothing
committed: every start rebuilds the full picture) and keeps, per incident id, the event with the
highest version (delivery is at least once: duplicates and older versions change nothing) plus a
short history of versions. Resolved incidents stay on the page for 24 h after their
`emitted_at`. Dispatcher actions posted to the API are checked with the worker's own parser and
produced to the actions topic; the worker's answer comes back as a new incident event, pushed to
every open page over Server-Sent Events (`GET /api/events`). Actions the worker refuses (its
`incident-actions.dlq`, read from its end) are pushed too, as `refused` events.

HTTP API (JSON unless said otherwise; `<`, `>` and `&` inside JSON strings are sent as `\\u003c`
etc., so no response can be read as markup):

- `GET /`: the page (stream/web/); its static files under `/static/`. Never needs a token (it
  holds no data).
- `GET /api/config`: what the page needs to start (`tile_url`, `read_protected`,
  `actions_enabled`).
- `GET /api/incidents?status=&category=&jurisdiction=`: `{"incidents": [...], "count",
  "caught_up"}`, newest opening first. Each item is the incident's latest event plus `state`
  (`new`, `acknowledged`, `assigned` or `resolved`) and `category_text` (in words). `status`
  (comma-separated) takes those states, the contract's `open`, `active` (everything not
  resolved) or `all`; `category` and `jurisdiction` may be repeated; `jurisdiction=-` matches
  incidents without one.
- `GET /api/incidents/{id}`: `{"incident": {...}, "history": [...]}` (history: oldest first).
- `GET /api/incidents/{id}.cap`: the incident as a CAP 1.2 alert (`application/cap+xml`).
- `POST /api/incidents/{id}/actions`: a dispatcher action (CONTRACT §3) without `incident_id` (or
  with the same one). `at` is always the console's clock (UTC), `by` defaults to `console`.
  Answered `202` with the action as produced. Needs `Authorization: Bearer <token>` (401 without
  or with an unknown token; 403 for every action when no token is configured),
  `Content-Type: application/json` (415 otherwise) and, when the browser sends an `Origin`, the
  console's own origin (403 otherwise). No cookies are used, so there is nothing to forge.
- `GET /api/events`: Server-Sent Events: `incident` (an item as above, for every event that
  changed the view), `refused` (an action the worker dead-lettered), `status` (`caught_up`),
  `gone` (`incident_ids` of resolved incidents past their 24 h).
- `GET /api/status`: `caught_up`, `consumed`, `incidents`, `subscribers`.
- `GET /open311/v2/requests.json?status=open|closed&service_code=&service_request_id=`: the current
  incidents as GeoReport v2 service requests (formats.open311_request).

With `console.read_protected`, every `/api/*` read but `/api/config` and the Open311 feed need a
token too. Tokens: `console.token_file` (one per line, `#` comments) and
`GEOINCIDENT_CONSOLE_TOKEN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from geoincident import __version__
from geoincident.detectors.actions import (
    MAX_ACTION_BYTES,
    ActionError,
    encode_action,
    parse_action,
)
from geoincident.detectors.timefmt import format_ms, parse_rfc3339_ms
from geoincident.files import MAX_SECRET_FILE_BYTES, read_bounded_text
from geoincident.stream import formats
from geoincident.stream.app import kafka_client_options, logfmt, run_until_signalled
from geoincident.stream.config import ConfigError, Settings

log = logging.getLogger("geoincident.console")

WEB_DIR = Path(__file__).resolve().parent / "web"
TOKEN_ENV = "GEOINCIDENT_CONSOLE_TOKEN"
RETAIN_RESOLVED_S = 24 * 3600
HISTORY_LIMIT = 50
STATES = ("new", "acknowledged", "assigned", "resolved")
STATUS_FILTERS = frozenset((*STATES, "open", "active", "all"))
NO_JURISDICTION = "-"
SSE_KEEPALIVE_S = 15.0
SSE_BACKLOG = 2000  # events queued for one slow page; beyond, it is dropped and reconnects
# An incident event is a few kilobytes (at most `max_report_ids` members); a record larger
# than this on the incidents topic (or the actions dead-letter topic) is skipped, unparsed.
MAX_EVENT_BYTES = 1024 * 1024
PRUNE_INTERVAL_S = 60.0

_STATIC = {
    "app.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
_HISTORY_FIELDS = (
    "version",
    "event",
    "status",
    "emitted_at",
    "report_count",
    "independent_reporters",
    "confidence",
    "score",
    "acknowledged_by",
    "acknowledged_at",
    "assigned_to",
    "resolved_reason",
    "superseded_by",
)

Send = Callable[[str, bytes, bytes], Awaitable[None]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def state_of(event: Mapping[str, Any]) -> str:
    """What the page shows: `resolved`, `assigned` (a crew has it), `acknowledged` or `new`."""
    status = event.get("status")
    if status == "resolved":
        return "resolved"
    if event.get("assigned_to"):
        return "assigned"
    if status == "acknowledged":
        return "acknowledged"
    return "new"


def item_of(event: Mapping[str, Any]) -> dict[str, Any]:
    """An incident as the API lists it: its latest event plus the console `state` and
    `category_text` (the category in words)."""
    return {
        **event,
        "state": state_of(event),
        "category_text": formats.category_text(event.get("category", "")),
    }


def json_bytes(data: Any) -> bytes:
    """JSON whose strings carry no raw `<`, `>` or `&`: safe even where it could be taken for
    markup. (Those characters only ever occur inside JSON strings, where `\\u003c` means `<`.)"""
    return (
        orjson.dumps(data)
        .replace(b"<", b"\\u003c")
        .replace(b">", b"\\u003e")
        .replace(b"&", b"\\u0026")
    )


def load_tokens(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """The Bearer tokens that may act: `console.token_file` (one per line, blank lines and `#`
    comments skipped) and GEOINCIDENT_CONSOLE_TOKEN."""
    environ = os.environ if environ is None else environ
    tokens: list[str] = []
    path = settings.console.token_file
    if path:
        try:
            text = read_bounded_text(path, MAX_SECRET_FILE_BYTES)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"console.token_file: cannot read {path}: {exc}") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
    env_token = environ.get(TOKEN_ENV, "").strip()
    if env_token:
        tokens.append(env_token)
    return tokens


# ---------------------------------------------------------------------------------- view model


@dataclass
class _Entry:
    event: dict[str, Any]
    history: dict[int, dict[str, Any]] = field(default_factory=dict)


class IncidentView:
    """Per incident id the event with the highest version and its recent versions; resolved
    incidents are dropped `retain_resolved_s` after their `emitted_at`."""

    def __init__(
        self,
        retain_resolved_s: float = RETAIN_RESOLVED_S,
        history_limit: int = HISTORY_LIMIT,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.retain_ms = int(retain_resolved_s * 1000)
        self.history_limit = history_limit
        self.clock_ms = clock_ms
        self._entries: dict[str, _Entry] = {}
        # dropped resolved incidents: id -> (highest version seen, when to forget it), so that
        # a late duplicate of an older version does not bring one back
        self._dropped: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, incident_id: object) -> bool:
        return incident_id in self._entries

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Take one incident event; True when it is the incident's new latest version."""
        incident_id = event.get("incident_id")
        version = event.get("version")
        if not isinstance(incident_id, str) or not incident_id or type(version) is not int:
            return False
        entry = self._entries.get(incident_id)
        if entry is None:
            dropped = self._dropped.get(incident_id)
            if dropped is not None and version <= dropped[0]:
                return False
            now = self.clock_ms()
            if self._expired(event, now):
                self._dropped[incident_id] = (version, now + self.retain_ms)
                return False
            self._dropped.pop(incident_id, None)
            entry = self._entries[incident_id] = _Entry(dict(event))
            self._remember(entry, event)
            return True
        if version in entry.history or version <= entry.event["version"]:
            if version not in entry.history and version > self._oldest(entry):
                self._remember(entry, event)  # an older version that arrived late
            return False
        entry.event = dict(event)
        self._remember(entry, event)
        return True

    def prune(self, now: int | None = None) -> list[str]:
        """Drop the resolved incidents past their retention; returns their ids."""
        now = self.clock_ms() if now is None else now
        gone = [i for i, e in self._entries.items() if self._expired(e.event, now)]
        for incident_id in gone:
            entry = self._entries.pop(incident_id)
            self._dropped[incident_id] = (entry.event["version"], now + self.retain_ms)
        for incident_id in [i for i, (_, until) in self._dropped.items() if until <= now]:
            del self._dropped[incident_id]
        return gone

    def get(self, incident_id: str) -> dict[str, Any] | None:
        entry = self._entries.get(incident_id)
        return None if entry is None else entry.event

    def history(self, incident_id: str) -> list[dict[str, Any]]:
        entry = self._entries.get(incident_id)
        if entry is None:
            return []
        return [entry.history[v] for v in sorted(entry.history)]

    def events(self) -> list[dict[str, Any]]:
        return [e.event for e in self._entries.values()]

    def list(
        self,
        status: Iterable[str] | None = None,
        category: Iterable[str] | None = None,
        jurisdiction: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Items (`item_of`) matching every filter given, newest opening first."""
        statuses = set(status or ()) - {"all"}
        categories = set(category or ())
        jurisdictions = set(jurisdiction or ())
        out = []
        for entry in self._entries.values():
            event = entry.event
            state = state_of(event)
            if statuses and not (
                state in statuses
                or event.get("status") in statuses
                or ("active" in statuses and state != "resolved")
            ):
                continue
            if categories and event.get("category") not in categories:
                continue
            if jurisdictions:
                place = event.get("jurisdiction")
                if (place if place is not None else NO_JURISDICTION) not in jurisdictions:
                    continue
            out.append(item_of(event))
        out.sort(key=lambda i: (str(i.get("validated_at", "")), i["incident_id"]), reverse=True)
        return out

    def _remember(self, entry: _Entry, event: Mapping[str, Any]) -> None:
        entry.history[event["version"]] = {k: event[k] for k in _HISTORY_FIELDS if k in event}
        while len(entry.history) > self.history_limit:
            del entry.history[min(entry.history)]

    @staticmethod
    def _oldest(entry: _Entry) -> int:
        return min(entry.history) if entry.history else 0

    def _expired(self, event: Mapping[str, Any], now: int) -> bool:
        if event.get("status") != "resolved":
            return False
        try:
            emitted = parse_rfc3339_ms(str(event.get("emitted_at")))
        except ValueError:
            return False  # kept; dropped once a valid later version comes
        return emitted + self.retain_ms <= now


# ---------------------------------------------------------------------------- live updates


class _Subscriber:
    def __init__(self) -> None:
        self.items: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.closed = False


class Hub:
    """Fans Server-Sent Events out to every open page."""

    def __init__(self, backlog: int = SSE_BACKLOG) -> None:
        self.backlog = backlog
        self._subscribers: set[_Subscriber] = set()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> _Subscriber:
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, kind: str, data: Any) -> None:
        if not self._subscribers:
            return
        self._seq += 1
        message = b"id: %d\nevent: %s\ndata: %s\n\n" % (self._seq, kind.encode(), json_bytes(data))
        for subscriber in list(self._subscribers):
            if len(subscriber.items) >= self.backlog:
                subscriber.closed = True  # too slow: it reconnects and loads the list again
                self._subscribers.discard(subscriber)
            else:
                subscriber.items.append(message)
            subscriber.wake.set()

    def close(self) -> None:
        for subscriber in self._subscribers:
            subscriber.closed = True
            subscriber.wake.set()
        self._subscribers.clear()


# --------------------------------------------------------------------------------- console


class Console:
    """The console's state: the view, the live hub, the tokens and how actions are produced."""

    def __init__(
        self,
        settings: Settings,
        *,
        tokens: Iterable[str] | None = None,
        send: Send | None = None,
        view: IncidentView | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = list(load_tokens(settings) if tokens is None else tokens)
        self._token_bytes = [t.encode("utf-8") for t in self.tokens]
        self._send = send
        self.view = view if view is not None else IncidentView()
        self.hub = Hub()
        self.caught_up = False
        self.consumed = 0
        self.malformed = 0
        open311 = settings.notify.open311
        self.service_codes: Mapping[str, str] = dict(open311.service_codes) if open311 else {}

    def token_ok(self, token: str) -> bool:
        """Constant time per configured token; every token is compared."""
        given = token.encode("utf-8")
        ok = False
        for known in self._token_bytes:
            ok |= hmac.compare_digest(given, known)
        return ok

    def ingest(self, value: bytes | None) -> bool:
        """One record of the incidents topic; pushes it to the pages when it changed the view."""
        self.consumed += 1
        if value is not None and len(value) > MAX_EVENT_BYTES:
            self.malformed += 1
            log.warning(logfmt("record_skipped", reason="too_large", bytes=len(value)))
            return False
        try:
            event = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            self.malformed += 1
            return False
        if not self.view.apply(event):
            return False
        self.hub.publish("incident", item_of(event))
        return True

    def ingest_refusal(self, value: bytes | None) -> None:
        """One record of the actions dead-letter topic: the pages learn their action failed."""
        if value is not None and len(value) > MAX_EVENT_BYTES:
            return
        try:
            record = orjson.loads(value or b"")
            action = orjson.loads(record.get("raw") or b"{}") if isinstance(record, dict) else {}
        except (orjson.JSONDecodeError, TypeError):
            return
        if not isinstance(record, dict) or not isinstance(action, dict):
            return
        self.hub.publish(
            "refused",
            {
                "incident_id": action.get("incident_id"),
                "action": action.get("action"),
                "at": action.get("at"),
                "reason": record.get("reason"),
                "detail": record.get("detail"),
            },
        )

    def prune(self) -> None:
        """Drop the resolved incidents past their retention, from the open pages too."""
        gone = self.view.prune()
        if gone:
            self.hub.publish("gone", {"incident_ids": gone})

    def set_caught_up(self) -> None:
        if not self.caught_up:
            self.caught_up = True
            log.info(logfmt("console_caught_up", incidents=len(self.view), read=self.consumed))
            self.hub.publish("status", {"caught_up": True})

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self._send is None:
            raise RuntimeError("no producer")
        await self._send(topic, key, value)


CONSOLE_KEY = web.AppKey("console", Console)


def _error(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json_bytes({"error": error, "detail": detail}),
        content_type="application/json",
        headers=headers,
    )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json_bytes(data), content_type="application/json")


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="geoincident-console"'}


def _check_token(console: Console, request: web.Request) -> web.Response | None:
    """None when the request carries a configured token, else the 401 to answer."""
    token = _bearer(request)
    if token is None:
        return _error(
            401, "unauthorized", "an Authorization: Bearer <token> header is needed", _CHALLENGE
        )
    if not console.token_ok(token):
        return _error(401, "invalid_token", "the token is not one of the console's", _CHALLENGE)
    return None


def _same_origin(request: web.Request) -> bool:
    """No `Origin` (not a browser, or a same-origin GET), or exactly this console's."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin.strip())
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


def _content_security_policy(tile_url: str | None) -> str:
    img = "'self' data:"
    if tile_url:
        parts = urlsplit(tile_url)
        if parts.scheme in ("http", "https") and parts.netloc:
            img += f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src {img}; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


def _is_data_path(path: str) -> bool:
    return (path.startswith("/api/") and path != "/api/config") or path.startswith("/open311/")


def build_app(console: Console) -> web.Application:
    """The aiohttp application over a Console (no Kafka in here: see run_console)."""
    settings = console.settings
    csp = _content_security_policy(settings.console.tile_url)

    @web.middleware
    async def read_guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            settings.console.read_protected
            and request.method in ("GET", "HEAD")
            and _is_data_path(request.path)
        ):
            refusal = _check_token(console, request)
            if refusal is not None:
                return refusal
        return await handler(request)

    async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers["Content-Security-Policy"] = csp
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        if "Cache-Control" not in headers:
            static = request.path == "/" or request.path.startswith("/static/")
            headers["Cache-Control"] = "no-cache" if static else "no-store"

    app = web.Application(middlewares=[read_guard], client_max_size=MAX_ACTION_BYTES)
    app[CONSOLE_KEY] = console
    app.on_response_prepare.append(security_headers)
    routes = [
        web.get("/", _index),
        web.get("/static/{name}", _static),
        web.get("/api/config", _config),
        web.get("/api/status", _status),
        web.get("/api/events", _events),
        web.get("/api/incidents", _list),
        web.get(r"/api/incidents/{id:[^/.]+}.cap", _cap),
        web.get(r"/api/incidents/{id:[^/.]+}", _detail),
        web.post(r"/api/incidents/{id:[^/.]+}/actions", _action),
        web.get("/open311/v2/requests.json", _open311),
    ]
    app.add_routes(routes)
    return app


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Content-Type": "text/html"})


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = _STATIC.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.FileResponse(WEB_DIR / name, headers={"Content-Type": content_type})


async def _config(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    settings = console.settings.console
    return _json(
        {
            "version": __version__,
            "tile_url": settings.tile_url,
            "read_protected": settings.read_protected,
            "actions_enabled": bool(console.tokens),
            "retain_resolved_s": console.view.retain_ms // 1000,
        }
    )


async def _status(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    return _json(
        {
            "caught_up": console.caught_up,
            "consumed": console.consumed,
            "malformed": console.malformed,
            "incidents": len(console.view),
            "subscribers": len(console.hub),
        }
    )


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _values(query: Any, name: str) -> list[str]:
    """A parameter that may be repeated (names may hold commas); empty ones are no filter."""
    return [value for value in query.getall(name, []) if value]


async def _list(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    query = request.query
    statuses = _split(query.get("status"))
    unknown = [s for s in statuses if s not in STATUS_FILTERS]
    if unknown:
        return _error(
            400,
            "bad_filter",
            f"status {unknown[0]!r} is not one of {', '.join(sorted(STATUS_FILTERS))}",
        )
    console.prune()
    items = console.view.list(
        status=statuses,
        category=_values(query, "category"),
        jurisdiction=_values(query, "jurisdiction"),
    )
    return _json({"incidents": items, "count": len(items), "caught_up": console.caught_up})


def _incident(request: web.Request) -> dict[str, Any] | web.Response:
    """The incident of the URL, or the 404 to answer."""
    event = request.app[CONSOLE_KEY].view.get(request.match_info["id"])
    if event is None:
        return _error(404, "unknown_incident", "no such incident on this console")
    return event


async def _detail(request: web.Request) -> web.Response:
    event = _incident(request)
    if isinstance(event, web.Response):
        return event
    history = request.app[CONSOLE_KEY].view.history(event["incident_id"])
    return _json({"incident": item_of(event), "history": history})


async def _cap(request: web.Request) -> web.Response:
    event = _incident(request)
    if isinstance(event, web.Response):
        return event
    try:
        body = formats.cap_alert(event)
    except (KeyError, TypeError, ValueError) as exc:  # an event CAP cannot express
        return _error(422, "not_expressible", f"no CAP alert for this event: {exc}")
    return web.Response(body=body, content_type="application/cap+xml", charset="utf-8")


async def _open311(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    query = request.query
    wanted_status = query.get("status")
    codes = set(_split(query.get("service_code")))
    ids = set(_split(query.get("service_request_id")))
    console.prune()
    requests = []
    for item in console.view.list():
        if item.get("kind", "local") != "local":
            continue
        if ids and item["incident_id"] not in ids:
            continue
        event = console.view.get(item["incident_id"]) or item
        try:
            service_request = formats.open311_request(event, console.service_codes)
        except (KeyError, TypeError, ValueError):  # an event without a usable location
            continue
        if wanted_status and service_request.get("status") != wanted_status:
            continue
        if codes and service_request.get("service_code") not in codes:
            continue
        requests.append(service_request)
    return _json(requests)


async def _action(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    if not console.tokens:
        return _error(
            403,
            "actions_disabled",
            "this console has no token configured (console.token_file or "
            f"{TOKEN_ENV}), so it refuses every action",
        )
    refusal = _check_token(console, request)
    if refusal is not None:
        return refusal
    if not _same_origin(request):
        return _error(403, "cross_origin", "actions are only accepted from the console's own page")
    if request.content_type != "application/json":
        return _error(415, "unsupported_media_type", "an action is sent as application/json")
    incident_id = request.match_info["id"]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return _error(400, "bad_action", f"not JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, "bad_action", "an action is a JSON object")
    if body.get("incident_id", incident_id) != incident_id:
        return _error(400, "bad_action", "incident_id differs from the incident of the URL")
    body["incident_id"] = incident_id
    body["at"] = format_ms(now_ms())
    if not body.get("by"):
        body["by"] = "console"
    try:
        action = parse_action(orjson.dumps(body))
    except ActionError as exc:
        return _error(400, exc.reason, exc.detail)
    topic = console.settings.topics.actions
    try:
        await console.send(topic, incident_id.encode("utf-8"), encode_action(action))
    except Exception as exc:  # the broker is away: nothing was accepted
        log.warning(logfmt("console_action_failed", incident_id=incident_id, error=exc))
        return _error(503, "unavailable", f"the action could not be produced: {exc}")
    log.info(
        logfmt(
            "console_action",
            incident_id=incident_id,
            action=action.action,
            by=action.by,
            peer=request.remote,
        )
    )
    return _json(action.to_dict(), status=202)


async def _events(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    subscriber = console.hub.subscribe()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await response.prepare(request)
        await response.write(
            b"retry: 2000\nevent: status\ndata: %s\n\n"
            % json_bytes({"caught_up": console.caught_up})
        )
        while not subscriber.closed:
            try:
                await asyncio.wait_for(subscriber.wake.wait(), SSE_KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            subscriber.wake.clear()
            while subscriber.items:
                await response.write(subscriber.items.popleft())
    except ConnectionResetError:  # the page went away
        pass
    finally:
        console.hub.unsubscribe(subscriber)
    return response


# ------------------------------------------------------------------------------ kafka side


def _consumer_options(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.kafka.brokers,
        "client_id": f"{settings.kafka.client_id}-console",
        "group_id": None,
        "enable_auto_commit": False,
        "metadata_max_age_ms": 10_000,  # a topic created after the start is found soon
        **kafka_client_options(settings),
    }


async def _consume_incidents(console: Console, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    settings = console.settings
    consumer = AIOKafkaConsumer(
        settings.topics.incidents, auto_offset_reset="earliest", **_consumer_options(settings)
    )
    await consumer.start()
    started = time.monotonic()
    ends: dict[Any, int] | None = None
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            for messages in batch.values():
                for message in messages:
                    console.ingest(message.value)
            if console.caught_up:
                continue
            assignment = consumer.assignment()
            if not assignment:
                if time.monotonic() - started > 5.0:
                    console.set_caught_up()  # no topic (yet): nothing to catch up with
                continue
            if ends is None:
                ends = await consumer.end_offsets(list(assignment))
            positions = [await consumer.position(tp) for tp in ends]
            if all(p >= ends[tp] for p, tp in zip(positions, ends, strict=True)):
                console.set_caught_up()
    finally:
        await consumer.stop()


async def _consume_refusals(console: Console, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    settings = console.settings
    consumer = AIOKafkaConsumer(
        settings.topics.actions_dlq, auto_offset_reset="latest", **_consumer_options(settings)
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for message in messages:
                    console.ingest_refusal(message.value)
    finally:
        await consumer.stop()


async def _prune_periodically(console: Console, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PRUNE_INTERVAL_S)
        console.prune()


async def run_console(
    settings: Settings,
    *,
    port: int | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the console until `stop` is set (or a Kafka task fails, which is raised)."""
    from aiokafka import AIOKafkaProducer

    stop = stop or asyncio.Event()
    tokens = load_tokens(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.brokers,
        client_id=f"{settings.kafka.client_id}-console",
        acks="all",
        **kafka_client_options(settings),
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # a failed start leaves its connections to close
        raise

    async def send(topic: str, key: bytes, value: bytes) -> None:
        await producer.send_and_wait(topic, value, key=key)

    console = Console(settings, tokens=tokens, send=send)
    runner = web.AppRunner(build_app(console), access_log=None, shutdown_timeout=2.0)
    tasks: list[asyncio.Task[None]] = []
    try:
        await runner.setup()
        host = settings.console.host
        bound = settings.console.port if port is None else port
        site = web.TCPSite(runner, host, bound)
        await site.start()
        tasks = [
            asyncio.create_task(_consume_incidents(console, stop), name="console-incidents"),
            asyncio.create_task(_consume_refusals(console, stop), name="console-refusals"),
            asyncio.create_task(_prune_periodically(console, stop), name="console-prune"),
        ]
        log.info(
            logfmt(
                "console_started",
                url=f"http://{host}:{bound}/",
                incidents_topic=settings.topics.incidents,
                actions_topic=settings.topics.actions,
                tokens=len(tokens),
                read_protected=settings.console.read_protected,
            )
        )
        if not tokens:
            log.warning(logfmt("console_actions_disabled", detail=f"no token: set {TOKEN_ENV}"))
        if ready is not None:
            ready.set()
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for task in done:
            if task is not stopping and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        console.hub.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await runner.cleanup()
        await producer.stop()
        log.info(logfmt("console_stopped"))


def run(settings: Settings, port: int | None = None) -> int:
    """`geoincident console`: serve until SIGINT/SIGTERM; 0 then, 2 for a configuration it
    cannot use, 1 when it cannot run (the broker, the port)."""

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    try:
        run_until_signalled(lambda stop: run_console(settings, port=port, stop=stop))
    except KeyboardInterrupt:
        return 0
    except ConfigError as exc:  # a token, TLS or password file that cannot be used
        print(f"geoincident console: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the broker or the port: say so in one line
        from aiokafka.errors import KafkaError

        if not isinstance(exc, (KafkaError, OSError)):
            raise
        print(f"geoincident console: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
