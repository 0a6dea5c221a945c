"""Incident events (CONTRACT §2) in the formats other systems read: CAP 1.2, Open311, Slack.

Pure functions of one event, given as the dict of its JSON (`orjson.loads(event.to_json())`):
no I/O, no clock, so the same event always gives the same bytes. The console serves them, the
notifier pushes them.

**CAP 1.2** (`cap_alert`): one `<alert>` per event version.

- `identifier` = `{prefix}-{incident_id}-v{version}`, unique per version; `sent` = `emitted_at`
  in CAP's dateTime form: whole seconds (the fraction is dropped) and an offset, with UTC as
  `-00:00`, as CAP 1.2 §3.3.2 requires ("Z" is not allowed).
- `msgType`: `opened` -> `Alert`; `updated` -> `Update`; `resolved` -> `Update` (with
  responseType `AllClear` and urgency `Past`: the incident was real and is over), except
  `resolved_reason: retracted` -> `Cancel` (the reports that made it were flagged away, so the
  first alert should not have been sent). Every `Update`/`Cancel` has `references` to the
  opened alert, `sender,{prefix}-{incident_id}-v1,sent`. The events do not carry the opened
  event's `emitted_at`, so that `sent` is the incident's `validated_at` (what the opened event's
  `emitted_at` is in replay; within moments of it in the worker). Receivers match on
  sender and identifier.
- `incidents`: the incident id, its surge's id (`surge_id`) and the incident that absorbed it
  (`superseded_by`), when there are.
- `info/category` (CAP_CATEGORIES; first is the main one):

  | our category | CAP categories |
  |---|---|
  | streetlight_out, water_main_break, power_outage | Infra |
  | traffic_signal_out, pothole | Infra, Transport |
  | road_flooding | Safety, Transport |
  | downed_tree | Safety |
  | gas_leak | Safety, Fire |
  | any other (operator taxonomies) | Other |

- `urgency`: `Past` once resolved; `Immediate` for a gas leak and for any surge; else
  `Expected` (a crew should act within the hour).
- `severity` (SEVERITY): gas_leak `Severe`; road_flooding, water_main_break, power_outage,
  downed_tree, traffic_signal_out `Moderate`; streetlight_out, pothole `Minor`; other categories
  `Unknown`. A surge (a whole district) is one step more, at most `Severe`: crowd reports alone
  never claim `Extreme`.
- `certainty` from `confidence` (CONTRACT §2: a probability-like 0…1): >= 0.9 `Observed`,
  >= 0.5 `Likely`, >= 0.1 `Possible`, below `Unlikely`.
- `responseType`: `AllClear` when resolved (not for `Cancel`); `Avoid` for gas_leak,
  road_flooding and downed_tree; else `Monitor`.
- `area`: `areaDesc` is the jurisdiction, else `"lat,lon"`; a `<polygon>` per GeoJSON ring
  exterior (`"lat,lon lat,lon …"`, closed, at least 4 points) when the event has a geometry,
  else a `<circle>` `"lat,lon radiusKm"` of `radius_m` (at least MIN_CIRCLE_M); a `<geocode>`
  `H3` per cell of `cells` (a surge's regions, a local incident's member cells).
- `parameter`s carry the machine-readable fields (incident_id, version, event, kind, status,
  confidence, counts, h3_cell, surge_id, resolved_reason, …).

The tree is built with xml.etree, so text is escaped by the serialiser; characters XML 1.0
cannot hold at all (control characters, lone surrogates) are replaced by U+FFFD first.

**Open311 GeoReport v2**: `open311_request` is a service request as `GET requests.json` lists it
(every field of the spec, `null` where we have nothing); `open311_post` the form fields of
`POST requests.json`.

**Slack** (`slack_message`): an incoming-webhook payload with a `text` fallback and `blocks`;
all text from the event is escaped (`&`, `<`, `>`) so it can neither mention nor link.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"

# our category -> CAP <category> values (the first is the main one); others are "Other"
CAP_CATEGORIES: dict[str, tuple[str, ...]] = {
    "streetlight_out": ("Infra",),
    "traffic_signal_out": ("Infra", "Transport"),
    "pothole": ("Infra", "Transport"),
    "water_main_break": ("Infra",),
    "power_outage": ("Infra",),
    "road_flooding": ("Safety", "Transport"),
    "downed_tree": ("Safety",),
    "gas_leak": ("Safety", "Fire"),
}

# CAP severity of one local incident of the category; a surge is one step more (at most Severe)
SEVERITY: dict[str, str] = {
    "gas_leak": "Severe",
    "road_flooding": "Moderate",
    "water_main_break": "Moderate",
    "power_outage": "Moderate",
    "downed_tree": "Moderate",
    "traffic_signal_out": "Moderate",
    "streetlight_out": "Minor",
    "pothole": "Minor",
}
_SEVERITY_UP = {"Minor": "Moderate", "Moderate": "Severe", "Severe": "Severe"}

IMMEDIATE = frozenset({"gas_leak"})  # urgency Immediate even for a local incident
AVOID = frozenset({"gas_leak", "road_flooding", "downed_tree"})  # responseType Avoid

# certainty: the first row whose lower bound the confidence reaches
CERTAINTY: tuple[tuple[float, str], ...] = (
    (0.9, "Observed"),
    (0.5, "Likely"),
    (0.1, "Possible"),
    (0.0, "Unlikely"),
)

MIN_CIRCLE_M = 25.0  # a <circle> of a point-like incident: about one report's accuracy

RESOLVED_REASONS = {
    "quiet": "no new reports for a while",
    "dispatcher": "resolved by a dispatcher",
    "superseded": "merged into another incident",
    "retracted": "withdrawn after reports were flagged",
}

OPEN311_DESCRIPTION_MAX = 4000  # GeoReport v2: description is limited to 4,000 characters
# Slack: a field of a section holds 2,000 characters, a text 3,000; each piece of event text
# is clipped to this before escaping (which at most quintuples it)
SLACK_TEXT_MAX = 300

# CAP 1.2 §3.2.1: identifier and sender "MUST NOT include spaces, commas or restricted
# characters (< and &)"
_CAP_TOKEN_BAD = re.compile(r"[\s,<&]")
# characters XML 1.0 cannot carry (everything else of Unicode it can)
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# ---------------------------------------------------------------------------------------------
# shared


def category_text(category: str) -> str:
    """Human text of a category: "streetlight_out" -> "Streetlight out"."""
    text = " ".join(str(category).replace("_", " ").split())
    if not text:
        return "Unknown"
    return text[0].upper() + text[1:]


def _number(value: float, decimals: int = 7) -> str:
    """A coordinate or distance without exponent or trailing zeros: 47.6062, -122.3321."""
    text = f"{float(value):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _sentence(text: str) -> str:
    """Capitalised, with a full stop."""
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


def _reporters(event: Mapping[str, Any]) -> str:
    count = int(event.get("report_count") or 0)
    people = int(event.get("independent_reporters") or 0)
    reports = "1 report" if count == 1 else f"{count} reports"
    reporters = "1 independent reporter" if people == 1 else f"{people} independent reporters"
    return f"{reports} from {reporters}"


def _place(event: Mapping[str, Any]) -> str:
    jurisdiction = event.get("jurisdiction")
    if jurisdiction:
        return str(jurisdiction)
    return f"{_number(event['lat'])},{_number(event['lon'])}"


def _status_text(event: Mapping[str, Any]) -> str:
    status = str(event.get("status") or "open")
    if event.get("event") == "resolved" or status == "resolved":
        reason = event.get("resolved_reason")
        text = "resolved"
        if reason:
            text += f" ({RESOLVED_REASONS.get(str(reason), str(reason))})"
        if event.get("superseded_by"):
            text += f", now part of {event['superseded_by']}"
        return text
    parts = [status]
    if event.get("acknowledged_by"):
        parts.append(f"acknowledged by {event['acknowledged_by']}")
    if event.get("assigned_to"):
        parts.append(f"assigned to {event['assigned_to']}")
    return ", ".join(parts)


def _surge_text(event: Mapping[str, Any]) -> str | None:
    """What the event says about surges: a surge's rate, or a local incident's surge."""
    surge = event.get("surge")
    if event.get("kind") == "surge" and isinstance(surge, Mapping):
        regions = surge.get("regions") or event.get("cells") or []
        area = "1 district" if len(regions) == 1 else f"{len(regions)} districts"
        return (
            f"surge over {area}: {surge.get('rate_per_min')} reports/min, "
            f"{surge.get('ratio')}x the usual {surge.get('baseline_per_min')}/min"
        )
    if event.get("surge_id"):
        return f"part of surge {event['surge_id']}"
    return None


def _headline(event: Mapping[str, Any]) -> str:
    what = category_text(event.get("category", ""))
    if event.get("kind") == "surge":
        what = f"Surge of {what[0].lower() + what[1:]} reports"
    where = _place(event)
    kind = event.get("event")
    if kind == "resolved":
        return f"Resolved: {what} at {where}"
    if kind == "updated":
        return f"Update: {what} at {where}, {_reporters(event)}"
    return f"{what} at {where}, {_reporters(event)}"


def _description(event: Mapping[str, Any]) -> str:
    lines = [
        f"{category_text(event.get('category', ''))}: {_reporters(event)}.",
        f"Confidence {float(event.get('confidence') or 0.0):.3f}.",
        f"Jurisdiction: {event.get('jurisdiction') or 'none'}.",
        f"Location: {_number(event['lat'])},{_number(event['lon'])}"
        f" (within {_number(float(event.get('radius_m') or 0.0), 1)} m).",
        f"First report {event.get('first_report_at')}, last report {event.get('last_report_at')}.",
        f"Status: {_status_text(event)}.",
    ]
    sources = event.get("sources")
    if isinstance(sources, Mapping) and sources:
        lines.append("Sources: " + ", ".join(f"{k} {v}" for k, v in sources.items()) + ".")
    surge = _surge_text(event)
    if surge:
        lines.append(_sentence(surge))
    lines.append(f"Incident {event.get('incident_id')}, version {event.get('version')}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CAP 1.2


def cap_datetime(stamp: str) -> str:
    """An RFC 3339 timestamp in CAP's dateTime form: 2026-11-24T09:05:00-00:00.

    Whole seconds (any fraction is dropped), the offset kept, UTC written `-00:00`
    (CAP 1.2 §3.3.2: "Z" MUST NOT be used, UTC is "-00:00").
    """
    moment = datetime.fromisoformat(stamp)
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError(f"timestamp {stamp!r} has no UTC offset")
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if offset == timedelta(0):
        return text + "-00:00"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def _cap_token(value: str, what: str) -> str:
    if not value or _CAP_TOKEN_BAD.search(value):
        raise ValueError(f"CAP {what} {value!r} must be non-empty, without spaces, ',', '<', '&'")
    return value


def _xml_text(value: object) -> str:
    return _XML_ILLEGAL.sub("\ufffd", str(value))


def _sub(parent: ET.Element, name: str, text: object) -> ET.Element:
    element = ET.SubElement(parent, f"{{{CAP_NS}}}{name}")
    element.text = _xml_text(text)
    return element


def _pair(parent: ET.Element, name: str, value_name: str, value: object) -> None:
    element = ET.SubElement(parent, f"{{{CAP_NS}}}{name}")
    _sub(element, "valueName", value_name)
    _sub(element, "value", value)


def cap_identifier(event: Mapping[str, Any], version: int, prefix: str = "geoincident") -> str:
    return _cap_token(f"{prefix}-{event['incident_id']}-v{int(version)}", "identifier")


def cap_categories(category: str) -> tuple[str, ...]:
    return CAP_CATEGORIES.get(category, ("Other",))


def cap_severity(event: Mapping[str, Any]) -> str:
    severity = SEVERITY.get(str(event.get("category")), "Unknown")
    if event.get("kind") == "surge" and severity != "Unknown":
        severity = _SEVERITY_UP[severity]
    return severity


def cap_urgency(event: Mapping[str, Any]) -> str:
    if event.get("event") == "resolved" or event.get("status") == "resolved":
        return "Past"
    if event.get("kind") == "surge" or event.get("category") in IMMEDIATE:
        return "Immediate"
    return "Expected"


def cap_certainty(confidence: float | None) -> str:
    if confidence is None or math.isnan(float(confidence)):
        return "Unknown"
    for bound, certainty in CERTAINTY:
        if float(confidence) >= bound:
            return certainty
    return "Unlikely"


def cap_msg_type(event: Mapping[str, Any]) -> str:
    kind = event.get("event")
    if kind == "opened":
        return "Alert"
    if kind == "resolved" and event.get("resolved_reason") == "retracted":
        return "Cancel"
    return "Update"


def _rings(geometry: object) -> list[list[tuple[float, float]]]:
    """Exterior rings of a GeoJSON Polygon or MultiPolygon as closed (lat, lon) lists of at
    least 4 points; nothing usable gives []."""
    if not isinstance(geometry, Mapping):
        return []
    coordinates = geometry.get("coordinates")
    if geometry.get("type") == "Polygon":
        polygons = [coordinates]
    elif geometry.get("type") == "MultiPolygon":
        polygons = list(coordinates or [])
    else:
        return []
    rings = []
    for polygon in polygons:
        if not polygon:
            continue
        try:
            ring = [(float(point[1]), float(point[0])) for point in polygon[0]]
        except (TypeError, ValueError, IndexError):
            continue
        if ring and ring[0] != ring[-1]:
            ring.append(ring[0])
        if len(set(ring)) >= 3 and len(ring) >= 4:
            rings.append(ring)
    return rings


def cap_alert(
    event: dict,
    *,
    sender: str = "geoincident@localhost",
    identifier_prefix: str = "geoincident",
) -> bytes:
    """The event as a CAP 1.2 `<alert>` document (UTF-8, with an XML declaration)."""
    _cap_token(sender, "sender")
    version = int(event["version"])
    kind = event.get("event")
    msg_type = cap_msg_type(event)
    category = str(event.get("category", ""))

    alert = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(alert, "identifier", cap_identifier(event, version, identifier_prefix))
    _sub(alert, "sender", sender)
    _sub(alert, "sent", cap_datetime(event["emitted_at"]))
    _sub(alert, "status", "Actual")
    _sub(alert, "msgType", msg_type)
    _sub(alert, "source", "geoincident")
    _sub(alert, "scope", "Public")
    if msg_type in ("Update", "Cancel"):
        first = cap_identifier(event, 1, identifier_prefix)
        first_sent = cap_datetime(event.get("validated_at") or event["emitted_at"])
        _sub(alert, "references", f"{sender},{first},{first_sent}")
    incidents = [event["incident_id"], event.get("surge_id"), event.get("superseded_by")]
    _sub(alert, "incidents", " ".join(str(i) for i in incidents if i))

    info = ET.SubElement(alert, f"{{{CAP_NS}}}info")
    _sub(info, "language", "en-US")
    for cap_category in cap_categories(category):
        _sub(info, "category", cap_category)
    _sub(info, "event", category_text(category))
    if msg_type != "Cancel":
        if kind == "resolved":
            _sub(info, "responseType", "AllClear")
        else:
            _sub(info, "responseType", "Avoid" if category in AVOID else "Monitor")
    _sub(info, "urgency", cap_urgency(event))
    _sub(info, "severity", cap_severity(event))
    _sub(info, "certainty", cap_certainty(event.get("confidence")))
    _pair(info, "eventCode", "geoincident", category)
    if event.get("first_report_at"):
        _sub(info, "onset", cap_datetime(event["first_report_at"]))
    _sub(info, "senderName", "geoincident")
    _sub(info, "headline", _headline(event))
    _sub(info, "description", _description(event))
    for name in (
        "incident_id",
        "version",
        "event",
        "kind",
        "status",
        "confidence",
        "report_count",
        "independent_reporters",
        "radius_m",
        "h3_cell",
        "surge_id",
        "resolved_reason",
        "superseded_by",
        "acknowledged_by",
        "assigned_to",
    ):
        value = event.get(name)
        if value is not None and value != "":
            _pair(info, "parameter", name, value)

    area = ET.SubElement(info, f"{{{CAP_NS}}}area")
    _sub(area, "areaDesc", _place(event))
    rings = _rings(event.get("geometry"))
    for ring in rings:
        _sub(area, "polygon", " ".join(f"{_number(lat)},{_number(lon)}" for lat, lon in ring))
    if not rings:
        radius_km = max(float(event.get("radius_m") or 0.0), MIN_CIRCLE_M) / 1000.0
        _sub(
            area,
            "circle",
            f"{_number(event['lat'])},{_number(event['lon'])} {_number(radius_km, 4)}",
        )
    for cell in event.get("cells") or [event.get("h3_cell")]:
        if cell:
            _pair(area, "geocode", "H3", cell)

    return ET.tostring(alert, encoding="utf-8", xml_declaration=True, default_namespace=CAP_NS)


# ---------------------------------------------------------------------------------------------
# Open311 GeoReport v2


def _open311_description(event: Mapping[str, Any]) -> str:
    text = _description(event)
    return text[:OPEN311_DESCRIPTION_MAX]


def _status_notes(event: Mapping[str, Any]) -> str | None:
    status = str(event.get("status") or "open")
    if event.get("event") == "resolved" or status == "resolved":
        return _sentence(_status_text(event))
    notes = []
    if event.get("acknowledged_by"):
        notes.append(f"Acknowledged by {event['acknowledged_by']}")
    if event.get("assigned_to"):
        notes.append(f"Assigned to {event['assigned_to']}")
    return "; ".join(notes) + "." if notes else None


def open311_request(event: dict, service_codes: Mapping[str, str]) -> dict:
    """The incident as a GeoReport v2 service request (one element of `GET requests.json`)."""
    category = str(event.get("category", ""))
    notice = [_reporters(event), f"confidence {float(event.get('confidence') or 0.0):.3f}"]
    surge = _surge_text(event)
    if surge:
        notice.append(surge)
    service_notice = _sentence("; ".join(notice))
    return {
        "service_request_id": str(event["incident_id"]),
        "status": "closed" if event.get("status") == "resolved" else "open",
        "status_notes": _status_notes(event),
        "service_name": category_text(category),
        "service_code": str(service_codes.get(category, category)),
        "description": _open311_description(event),
        "agency_responsible": event.get("jurisdiction") or None,
        "service_notice": service_notice,
        "requested_datetime": event.get("first_report_at"),
        "updated_datetime": event.get("emitted_at"),
        "expected_datetime": None,
        "address": None,
        "address_id": None,
        "zipcode": None,
        "lat": float(event["lat"]),
        "long": float(event["lon"]),
        "media_url": None,
    }


def open311_post(
    event: dict,
    service_code: str,
    *,
    jurisdiction_id: str | None = None,
    api_key: str | None = None,
) -> dict[str, str]:
    """Form fields of GeoReport v2 `POST requests.json` for the incident (None left out)."""
    fields = {
        "jurisdiction_id": jurisdiction_id,
        "api_key": api_key,
        "service_code": service_code,
        "lat": _number(event["lat"]),
        "long": _number(event["lon"]),
        "description": _open311_description(event),
    }
    return {name: str(value) for name, value in fields.items() if value is not None}


# ---------------------------------------------------------------------------------------------
# Slack


def slack_escape(text: object) -> str:
    """Text for Slack mrkdwn: `&`, `<` and `>` as Slack requires (no mentions, no links)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack(text: object, limit: int = SLACK_TEXT_MAX) -> str:
    """Event text for mrkdwn: clipped first (a cut never splits an escape), then escaped."""
    return slack_escape(_clip(str(text), limit))


_SLACK_ICON = {"opened": ":rotating_light:", "updated": ":arrows_counterclockwise:"}


def slack_message(event: dict) -> dict:
    """A Slack incoming-webhook payload (`text` fallback and `blocks`) for the event."""
    icon = _SLACK_ICON.get(str(event.get("event")), ":white_check_mark:")
    headline = _slack(_headline(event))
    lat, lon = _number(event["lat"]), _number(event["lon"])
    # made of numbers only: nothing from the event's text can get into the link ("&" is
    # escaped in a link too: Slack decodes the entities of the whole text)
    zoom = 13 if event.get("kind") == "surge" else 17
    url = f"https://www.openstreetmap.org/?mlat={lat}&amp;mlon={lon}#map={zoom}/{lat}/{lon}"
    link = f"<{url}|{lat}, {lon}>"
    where = link
    if event.get("jurisdiction"):
        where = f"{_slack(event['jurisdiction'])} ({link})"
    confidence = float(event.get("confidence") or 0.0)
    fields = [
        f"*What*\n{_slack(category_text(event.get('category', '')))}",
        f"*Where*\n{where}",
        f"*Reporters*\n{_slack(_reporters(event))}",
        f"*Confidence*\n{confidence:.0%}",
        f"*Status*\n{_slack(_sentence(_status_text(event)))}",
    ]
    surge = _surge_text(event)
    if surge:
        fields.append(f"*Surge*\n{_slack(_sentence(surge))}")
    context = " · ".join(
        _slack(part)
        for part in (
            f"{event.get('incident_id')} v{event.get('version')}",
            event.get("event"),
            event.get("emitted_at"),
        )
    )
    return {
        "text": f"{icon} {headline}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{headline}*"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


__all__ = [
    "CAP_CATEGORIES",
    "CAP_NS",
    "SEVERITY",
    "cap_alert",
    "cap_datetime",
    "category_text",
    "open311_post",
    "open311_request",
    "slack_escape",
    "slack_message",
]
