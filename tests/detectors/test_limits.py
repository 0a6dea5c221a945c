"""Size limits on reports and actions (CONTRACT §1, §1.4, §3): a value over the limit goes to
the dead-letter topic unparsed with a bounded `raw`; every string has a bound; nesting and null
values are refused, never raised."""

from __future__ import annotations

import base64
import sys

import orjson
import pytest

from geoincident.detectors import report as report_module
from geoincident.detectors.actions import MAX_ACTION_BYTES, ActionError, parse_action
from geoincident.detectors.report import (
    MAX_DLQ_RAW_BYTES,
    MAX_REPORT_BYTES,
    MAX_STRING_CHARS,
    MAX_TAGS,
    Rejection,
    Report,
    dlq_record,
    parse_report,
)
from geoincident.detectors.taxonomy import Taxonomy
from geoincident.stream.config import ConfigError, load_settings
from geoincident.stream.runtime import WorkerCore
from tests.builders import wire

TAXONOMY = Taxonomy()


def padded(size: int, **fields) -> bytes:
    """A valid report of exactly `size` bytes (an unknown field takes the slack)."""
    base = wire(pad="", **fields)
    value = wire(pad="x" * (size - len(base)), **fields)
    assert len(value) == size
    return value


def test_the_default_limit_is_64_kib_and_the_check_comes_first():
    assert MAX_REPORT_BYTES == 65_536
    assert isinstance(parse_report(padded(65_536), TAXONOMY), Report)
    rejected = parse_report(padded(65_537), TAXONOMY)
    assert rejected == Rejection("too_large", "65537 bytes > 65536")
    # checked before anything else: bytes that are neither UTF-8 nor JSON are too_large too
    junk = b"\xff" * 70_021
    assert parse_report(junk, TAXONOMY) == Rejection("too_large", "70021 bytes > 65536")


def test_an_oversized_value_is_never_parsed(monkeypatch):
    class Refuses:
        def decode(self, raw):
            raise AssertionError("parsed")

    monkeypatch.setattr(report_module, "_decoder", Refuses())
    monkeypatch.setattr(report_module.orjson, "loads", Refuses().decode)
    assert parse_report(padded(100_000), TAXONOMY).reason == "too_large"


def test_the_limit_is_configured_and_the_worker_core_applies_it(tmp_path):
    params = load_settings(overrides={"detection.max_report_bytes": 2048}).detector_params()
    assert params.taxonomy.max_report_bytes == 2048
    core = WorkerCore(params, "reports", source_is_file=True)
    out = core.on_reports(0, [(0, padded(2048), 0), (1, padded(2049), 0)], None)
    assert out.outcomes["accepted"] == 1
    assert out.rejections == {"too_large": 1}
    (record,) = [orjson.loads(r) for r in out.dlq]
    assert record["reason"] == "too_large" and record["detail"] == "2049 bytes > 2048"
    assert record["offset"] == 1
    for bad in (1023, 8 * 1024 * 1024 + 1, "big"):
        with pytest.raises(ConfigError, match=r"detection\.max_report_bytes"):
            load_settings(overrides={"detection.max_report_bytes": bad})


def _record(raw, reason="too_large", detail="d"):
    return dlq_record(
        raw, Rejection(reason, detail), topic="t", partition=0, offset=7, received_at_ms=None
    )


def test_the_dead_letter_record_of_an_oversized_value_holds_its_first_bytes_only():
    value = padded(200_000)
    record = _record(value)
    assert record["raw"] == value[:MAX_DLQ_RAW_BYTES].decode()
    assert record["raw_encoding"] == "utf-8"
    assert record["raw_truncated"] is True and record["raw_bytes"] == 200_000
    assert len(orjson.dumps(record)) < MAX_DLQ_RAW_BYTES + 512
    assert list(record)[:6] == [
        "reason",
        "detail",
        "raw",
        "raw_encoding",
        "raw_truncated",
        "raw_bytes",
    ]
    # cut inside a multi-byte character: the partial character is left out, still text
    accented = b'{"text":"' + "é".encode() * 100_000 + b'"}'
    cut = _record(accented)
    assert cut["raw_encoding"] == "utf-8"
    assert accented.startswith(cut["raw"].encode())
    assert MAX_DLQ_RAW_BYTES - 4 < len(cut["raw"].encode()) <= MAX_DLQ_RAW_BYTES
    # not UTF-8 at all: the first bytes in base64
    binary = _record(b"\xff\xfe" * 50_000)
    assert binary["raw_encoding"] == "base64"
    assert base64.b64decode(binary["raw"]) == (b"\xff\xfe" * 50_000)[:MAX_DLQ_RAW_BYTES]
    # every other reason keeps the whole value, as before
    whole = _record(value[:60_000], reason="invalid_json")
    assert whole["raw"] == value[:60_000].decode() and "raw_truncated" not in whole


@pytest.mark.parametrize("field", ["category", "source", "device", "lang"])
def test_optional_strings_are_bounded(field):
    assert isinstance(parse_report(wire(**{field: "a" * MAX_STRING_CHARS}), TAXONOMY), Report)
    refused = parse_report(wire(**{field: "a" * (MAX_STRING_CHARS + 1)}), TAXONOMY)
    assert refused == Rejection("bad_type", f"{field} has 129 chars > 128")


def test_tags_are_bounded_in_number_and_length():
    assert isinstance(parse_report(wire(tags=["#lightout"] * MAX_TAGS), TAXONOMY), Report)
    assert parse_report(wire(tags=["#lightout"] * (MAX_TAGS + 1)), TAXONOMY) == Rejection(
        "bad_type", "tags has 33 entries > 32"
    )
    long_tag = parse_report(wire(tags=["#lightout", "t" * 129]), TAXONOMY)
    assert long_tag == Rejection("bad_type", "tags[1] has 129 chars > 128")


def test_ids_and_text_keep_their_bounds():
    assert parse_report(wire(id="i" * 129), TAXONOMY).detail == "id must be 1-128 chars, not 129"
    assert parse_report(wire(reporter=""), TAXONOMY).detail == (
        "reporter must be 1-128 chars, not 0"
    )
    assert parse_report(wire(text="t" * 4097), TAXONOMY).detail == "text has 4097 chars > 4096"


def _nested(depth: int) -> bytes:
    return wire(extra=None)[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}"


def _at_stack_depth(frames: int, call):
    if frames <= 0:
        return call()
    return _at_stack_depth(frames - 1, call)


def test_deep_nesting_is_refused_never_raised_and_the_same_at_any_stack_depth():
    for depth in (1_100, 30_000):
        refused = parse_report(_nested(depth), TAXONOMY)
        assert refused.reason == "invalid_json" and "depth limit" in refused.detail
    # nested within the JSON parser's limit, in a field nobody reads: accepted, whether the
    # fast decoder follows it (shallow stack) or gives up (deep stack, as inside the worker)
    value = _nested(600)
    shallow = parse_report(value, TAXONOMY)
    deep = _at_stack_depth(sys.getrecursionlimit() - 500, lambda: parse_report(value, TAXONOMY))
    assert isinstance(shallow, Report) and deep == shallow


def test_a_null_value_is_invalid_json_with_an_empty_raw():
    rejected = parse_report(None, TAXONOMY)
    assert rejected == Rejection("invalid_json", "no value (a record with a null value)")
    record = _record(None, rejected.reason, rejected.detail)
    assert record["raw"] == "" and record["raw_encoding"] == "utf-8"


# -------------------------------------------------------------------------------- actions


def action(**fields) -> bytes:
    return orjson.dumps({"incident_id": "inc-0000000000000001", "action": "ack", **fields})


def test_an_oversized_action_is_too_large_and_unparsed_and_its_record_truncated():
    big = action(note="n" * 10, pad="p" * MAX_ACTION_BYTES)
    with pytest.raises(ActionError) as caught:
        parse_action(big)
    assert caught.value.reason == "too_large"
    assert caught.value.detail == f"{len(big)} bytes > {MAX_ACTION_BYTES}"
    params = load_settings().detector_params()
    core = WorkerCore(params, "reports", actions_topic="actions")
    out = core.on_action(big, 0, 3, now_ms=1_764_000_000_000)
    (record,) = [orjson.loads(r) for r in out.action_dlq]
    assert record["reason"] == "too_large" and record["topic"] == "actions"
    assert record["raw_truncated"] is True and record["raw_bytes"] == len(big)
    assert len(record["raw"]) == MAX_DLQ_RAW_BYTES


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (None, "no value"),
        (action(extra=None)[:-1] + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
        (action(note="n" * 4097), "length <= 4096"),
        (action(by="b" * 129), "length <= 128"),
        (action(incident_id="i" * 129), "length <= 128"),
        (action(action="block", reporter="r" * 129), "length <= 128"),
    ],
)
def test_actions_are_bounded_and_never_raise_anything_but_action_errors(value, detail):
    with pytest.raises(ActionError, match=detail) as caught:
        parse_action(value)
    assert caught.value.reason == "bad_action"
