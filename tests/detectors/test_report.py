import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoincident.detectors import DetectorParams, Rejection, Report, parse_report
from geoincident.detectors.report import REASONS, dlq_record, future_problem
from geoincident.detectors.taxonomy import Taxonomy
from tests.builders import T0_MS, Driven, report, wire

TAXONOMY = Taxonomy()


def reason_of(raw: bytes) -> str:
    parsed = parse_report(raw, TAXONOMY)
    assert isinstance(parsed, Rejection), parsed
    return parsed.reason


def test_a_good_report_parses_with_its_category_and_epoch_ms():
    parsed = parse_report(wire(extra_field={"ignored": True}), TAXONOMY)
    assert isinstance(parsed, Report)
    assert parsed.ts_ms == T0_MS
    assert parsed.category == "streetlight_out"
    assert not hasattr(parsed, "extra_field")


def test_a_report_keeps_its_fields_and_an_absent_accuracy_stays_absent():
    given = parse_report(wire(accuracy_m=0.0, device="dev-1", lang="en"), TAXONOMY)
    absent = parse_report(wire(id="other"), TAXONOMY)
    assert isinstance(given, Report) and isinstance(absent, Report)
    assert given.accuracy_m == 0.0 and absent.accuracy_m is None
    assert (given.device, given.lang, given.halo) == ("dev-1", "en", False)
    again = parse_report(wire(accuracy_m=0.0, device="dev-1", lang="en"), TAXONOMY)
    assert given == again and given != absent
    assert "accuracy_m=0.0" in repr(given) and "accuracy_m=None" in repr(absent)


def test_reports_order_by_event_time_then_id():
    early, late = report("b", 1.0), report("a", 2.0)
    tied = report("c", 1.0)
    assert sorted([late, tied, early]) == [early, tied, late]
    assert early < tied and not tied < early


def test_offsets_and_epoch_ms_give_the_same_instant():
    a = parse_report(wire(ts="2026-11-24T10:00:00.000+01:00"), TAXONOMY)
    b = parse_report(wire(ts=T0_MS), TAXONOMY)
    assert a.ts_ms == b.ts_ms == T0_MS


def test_too_large():
    assert reason_of(wire(text="x" * 70_000)) == "too_large"


def test_invalid_utf8():
    assert reason_of(b'{"id": "\xff\xfe"}') == "invalid_utf8"


@pytest.mark.parametrize("raw", [b"", b"{", b'{"id": "a",}', b"nope"])
def test_invalid_json(raw):
    assert reason_of(raw) == "invalid_json"


@pytest.mark.parametrize("raw", [b"[]", b"42", b'"text"', b"null"])
def test_not_an_object(raw):
    assert reason_of(raw) == "not_an_object"


@pytest.mark.parametrize("field", ["id", "ts", "lat", "lon", "reporter"])
def test_missing_field(field):
    parsed = parse_report(wire(**{field: ...}), TAXONOMY)
    assert parsed.reason == "missing_field"
    assert field in parsed.detail


@pytest.mark.parametrize(
    "fields",
    [
        {"id": 7},
        {"reporter": ["a"]},
        {"id": "x" * 129},
        {"lat": "47.6"},
        {"lon": True},
        {"tags": "#lightout"},
        {"text": 5},
        {"accuracy_m": -1},
        {"device": 12},
    ],
)
def test_bad_type(fields):
    assert reason_of(wire(**fields)) == "bad_type"


@pytest.mark.parametrize(
    "fields", [{"lat": 91.2}, {"lat": -90.5}, {"lon": 180.01}, {"lat": 0, "lon": 0}]
)
def test_bad_coordinates(fields):
    assert reason_of(wire(**fields)) == "bad_coordinates"


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-24T09:00:00",  # no offset
        "24/11/2026 09:00",
        "2026-13-40T09:00:00Z",
        1732438800,  # epoch seconds, not milliseconds
        1.5e12,
        True,
    ],
)
def test_bad_timestamp(ts):
    assert reason_of(wire(ts=ts)) == "bad_timestamp"


def test_future_timestamp_is_judged_against_a_given_clock():
    ahead = report("a", minute=10)
    assert future_problem(ahead, now_ms=T0_MS, tolerance_ms=300_000).reason == "future_timestamp"
    assert future_problem(ahead, now_ms=T0_MS + 6 * 60_000, tolerance_ms=300_000) is None


def test_too_late_is_older_than_watermark_minus_window():
    # the watermark is the latest event time less the lateness bound (2 min); the window 15 min
    driven = Driven(DetectorParams())
    driven.feed([report("now", minute=60)])
    driven.feed([report("late-but-ok", minute=60 - 2 - 14)])
    assert driven.last.outcomes == {"accepted": 1}
    driven.feed([report("too-old", minute=60 - 2 - 16)])
    assert driven.last.rejections == {"too_late": 1}
    assert driven.detector.observe(report("too-old-2", minute=60 - 2 - 16)).outcome == "too_late"


def test_every_reason_of_the_contract_is_known():
    assert set(REASONS) == {
        "too_large",
        "invalid_utf8",
        "invalid_json",
        "not_an_object",
        "missing_field",
        "bad_type",
        "bad_coordinates",
        "bad_timestamp",
        "future_timestamp",
        "too_late",
        "internal_error",
    }


def test_dlq_record_keeps_the_raw_value_utf8_or_base64():
    record = dlq_record(
        b"\xff", Rejection("invalid_utf8", "x"), topic="t", partition=1, offset=2, received_at_ms=0
    )
    assert record["raw_encoding"] == "base64" and record["raw"] == "/w=="
    record = dlq_record(
        b"{", Rejection("invalid_json", "x"), topic="t", partition=1, offset=2, received_at_ms=None
    )
    assert record["raw"] == "{" and record["raw_encoding"] == "utf-8"
    assert set(record) == {
        "reason",
        "detail",
        "raw",
        "raw_encoding",
        "topic",
        "partition",
        "offset",
        "received_at",
    }


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=20,
)
_report_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=130), st.integers()),
        "ts": st.one_of(st.integers(), st.text(max_size=30), st.just("2026-11-24T09:00:00Z")),
        "lat": st.one_of(st.floats(-100, 100), st.text(max_size=3)),
        "lon": st.one_of(st.floats(-200, 200), st.booleans()),
        "reporter": st.one_of(st.text(max_size=5), st.none()),
        "tags": st.one_of(st.lists(st.text(max_size=12), max_size=3), st.integers()),
        "category": st.one_of(st.sampled_from(["pothole", "Gas_Leak", "x"]), st.integers()),
        "text": st.text(max_size=30),
        "accuracy_m": st.one_of(st.floats(-5, 100), st.text(max_size=2)),
    },
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            _json_values.map(lambda v: json.dumps(v).encode()),
            _report_like.map(lambda v: json.dumps(v).encode()),
        ),
        max_size=30,
    )
)
def test_arbitrary_lines_never_raise_and_every_line_is_counted(lines):
    from tests.detectors.test_replay import replay_lines

    summary, _, _ = replay_lines(lines)
    assert (
        summary.accepted + summary.rejected_total + summary.duplicate + summary.unclassified
        == len(lines)
        == summary.read
    )


def test_a_halo_copy_changes_its_own_flag_not_that_of_reports_sharing_its_origin():
    first = Report("a", T0_MS, 47.6, -122.3, "u1", "pothole", "app", "d1", 5.0, "en")
    second = Report("b", T0_MS, 47.6, -122.3, "u2", "pothole", "app", "d2", None, "en")
    first.halo = True
    assert (first.source, first.lang, first.halo) == ("app", "en", True)
    assert (second.source, second.lang, second.halo) == ("app", "en", False)
    assert second.accuracy_m is None and first.accuracy_m == 5.0
    first.halo = False
    assert first == Report("a", T0_MS, 47.6, -122.3, "u1", "pothole", "app", "d1", 5.0, "en")
