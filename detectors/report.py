"""Reports at the edge: decode and validate raw bytes (CONTRACT §1), or say why not.

The fast path is one msgspec decode into a typed struct (C speed, unknown fields skipped);
only when it fails does the slow path work out which DLQ reason applies, so good input pays
nothing for the precision of the error messages.
"""

from __future__ import annotations

import base64
import math
import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
import orjson

from geoincident.detectors.held import Report as Report
from geoincident.detectors.taxonomy import DEFAULT_MAX_REPORT_BYTES, UNCLASSIFIED, Taxonomy
from geoincident.detectors.timefmt import (
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    datetime_to_ms,
    format_ms,
    parse_rfc3339_ms,
)

MAX_REPORT_BYTES = DEFAULT_MAX_REPORT_BYTES  # `[detection] max_report_bytes`, by default
MAX_ID_CHARS = 128
# every other string of a report (category, source, device, lang, each tag)
MAX_STRING_CHARS = 128
MAX_TAGS = 32
MAX_TEXT_CHARS = 4096
# A `too_large` value is not kept whole in its dead-letter record: its first bytes only.
MAX_DLQ_RAW_BYTES = 4096

# The DLQ reasons of CONTRACT §1, in the order the checks run.
REASONS = (
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
)

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Short = Annotated[str, msgspec.Meta(max_length=MAX_STRING_CHARS)]
_AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class _WireReport(msgspec.Struct):
    id: _Id
    ts: _AwareTime | int
    lat: float
    lon: float
    reporter: _Id
    tags: Annotated[list[_Short], msgspec.Meta(max_length=MAX_TAGS)] | None = None
    category: _Short | None = None
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)] | None = None
    source: _Short | None = None
    device: _Short | None = None
    accuracy_m: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    lang: _Short | None = None


_decoder = msgspec.json.Decoder(_WireReport)


class Rejection(msgspec.Struct, frozen=True, gc=False):
    """Why a raw value cannot be used; becomes a DLQ record."""

    reason: str
    detail: str


def _coordinates_problem(lat: float, lon: float) -> str | None:
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return "lat/lon must be finite numbers"
    if not -90.0 <= lat <= 90.0:
        return f"lat {lat} out of range"
    if not -180.0 <= lon <= 180.0:
        return f"lon {lon} out of range"
    if lat == 0.0 and lon == 0.0:
        return "(0, 0) is a null-island placeholder, not a location"
    return None


def _epoch_problem(ts_ms: int) -> str | None:
    if ts_ms < MIN_EPOCH_MS:
        return f"ts {ts_ms} is before 1973: epoch milliseconds expected (seconds sent?)"
    if ts_ms > MAX_EPOCH_MS:
        return f"ts {ts_ms} is beyond year 9999"
    return None


def parse_report(
    raw: bytes | None, taxonomy: Taxonomy, max_bytes: int | None = None
) -> Report | Rejection:
    """Decode and validate one raw report value; resolve its category.

    A value over `max_bytes` (default: the taxonomy's `max_report_bytes`, which the config's
    `[detection] max_report_bytes` sets) is refused before anything reads it. A Kafka record
    without a value (None) is `invalid_json`.
    """
    if raw is None:
        return Rejection("invalid_json", "no value (a record with a null value)")
    limit = taxonomy.max_report_bytes if max_bytes is None else max_bytes
    if len(raw) > limit:
        return Rejection("too_large", f"{len(raw)} bytes > {limit}")
    try:
        wire = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _diagnose(raw, str(exc))
    except RecursionError:
        # Nested deeper than the fast decoder follows at this depth of the call stack (which
        # differs between the worker and a replay): the slow path's parser has a fixed limit,
        # so whether such a value is accepted does not depend on who reads it.
        deep = _decode_deep(raw)
        if type(deep) is Rejection:
            return deep
        wire = deep  # type: ignore[assignment]
    lat = wire.lat
    lon = wire.lon
    # NaN fails every comparison, so the plain range test sends it to the named check too
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (lat == 0.0 and lon == 0.0):
        return Rejection("bad_coordinates", _coordinates_problem(lat, lon) or "bad coordinates")
    ts = wire.ts
    if type(ts) is int:
        ts_ms = ts
    else:
        ts_ms = datetime_to_ms(ts)  # type: ignore[arg-type]
    if not MIN_EPOCH_MS <= ts_ms <= MAX_EPOCH_MS:
        return Rejection("bad_timestamp", _epoch_problem(ts_ms) or "bad timestamp")
    # positional, in the order of held.FIELDS: the compiled constructor parses no keywords
    return Report(
        wire.id,
        ts_ms,
        lat,
        lon,
        wire.reporter,
        taxonomy.resolve(wire.category, wire.tags, wire.text),
        # reports of the same source and language share their strings: a Report holds the
        # two in an Origin that reports share (held.py)
        wire.source,
        wire.device,
        wire.accuracy_m,
        wire.lang,
    )


_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
_REQUIRED = ("id", "ts", "lat", "lon", "reporter")
_OPTIONAL_STRINGS = ("category", "source", "device", "lang")


def _parsed(raw: bytes) -> dict[str, Any] | Rejection:
    """The value as a JSON object (orjson: at most 1,024 levels deep), or why it is not one."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("invalid_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", str(exc))
    if not isinstance(value, dict):
        return Rejection("not_an_object", f"a JSON {type(value).__name__}, not an object")
    return value


def _diagnose(raw: bytes, decoder_error: str) -> Rejection:
    """The slow path: name the first thing wrong with a value the fast decoder refused."""
    value = _parsed(raw)
    if type(value) is Rejection:
        return value
    return _diagnose_object(value, decoder_error)  # type: ignore[arg-type]


def _diagnose_object(value: dict[str, Any], decoder_error: str) -> Rejection:
    missing = [name for name in _REQUIRED if value.get(name) is None]
    if missing:
        return Rejection("missing_field", "missing " + ", ".join(missing))
    # Every named check passed yet the strict decoder refused: report its own words.
    return _field_problem(value) or Rejection("bad_type", decoder_error)


def _decode_deep(raw: bytes) -> _WireReport | Rejection:
    """A value too deeply nested for the fast decoder: parsed by orjson (whose depth limit is
    fixed), then checked field by field (unknown fields are not looked into)."""
    value = _parsed(raw)
    if type(value) is Rejection:
        return value
    try:
        return msgspec.convert(value, _WireReport)
    except msgspec.ValidationError as exc:
        return _diagnose_object(value, str(exc))  # type: ignore[arg-type]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _field_problem(value: dict[str, Any]) -> Rejection | None:
    for name in ("id", "reporter"):
        field = value[name]
        if not isinstance(field, str):
            return Rejection("bad_type", f"{name} must be a string, not {type(field).__name__}")
        if not 1 <= len(field) <= MAX_ID_CHARS:
            return Rejection("bad_type", f"{name} must be 1-{MAX_ID_CHARS} chars, not {len(field)}")
    for name in ("lat", "lon"):
        if not _is_number(value[name]):
            return Rejection(
                "bad_type", f"{name} must be a number, not {type(value[name]).__name__}"
            )
    problem = _coordinates_problem(float(value["lat"]), float(value["lon"]))
    if problem is not None:
        return Rejection("bad_coordinates", problem)
    ts = value["ts"]
    if isinstance(ts, str):
        if _RFC3339.fullmatch(ts) is None:
            return Rejection("bad_timestamp", f"ts {ts!r} is not RFC 3339")
        try:
            ts_ms = parse_rfc3339_ms(ts)
        except ValueError as exc:
            return Rejection("bad_timestamp", f"ts {ts!r} is not RFC 3339: {exc}")
        problem = _epoch_problem(ts_ms)
        if problem is not None:
            return Rejection("bad_timestamp", problem)
    elif isinstance(ts, int) and not isinstance(ts, bool):
        problem = _epoch_problem(ts)
        if problem is not None:
            return Rejection("bad_timestamp", problem)
    else:
        return Rejection(
            "bad_timestamp",
            f"ts must be an RFC 3339 string or integer epoch ms, not {type(ts).__name__}",
        )
    for name in _OPTIONAL_STRINGS:
        field = value.get(name)
        if field is not None and not isinstance(field, str):
            return Rejection("bad_type", f"{name} must be a string, not {type(field).__name__}")
        if field is not None and len(field) > MAX_STRING_CHARS:
            return Rejection("bad_type", f"{name} has {len(field)} chars > {MAX_STRING_CHARS}")
    text = value.get("text")
    if text is not None:
        if not isinstance(text, str):
            return Rejection("bad_type", f"text must be a string, not {type(text).__name__}")
        if len(text) > MAX_TEXT_CHARS:
            return Rejection("bad_type", f"text has {len(text)} chars > {MAX_TEXT_CHARS}")
    tags = value.get("tags")
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            return Rejection("bad_type", "tags must be a list of strings")
        if len(tags) > MAX_TAGS:
            return Rejection("bad_type", f"tags has {len(tags)} entries > {MAX_TAGS}")
        for index, tag in enumerate(tags):
            if len(tag) > MAX_STRING_CHARS:
                return Rejection(
                    "bad_type", f"tags[{index}] has {len(tag)} chars > {MAX_STRING_CHARS}"
                )
    accuracy = value.get("accuracy_m")
    if accuracy is not None:
        if not _is_number(accuracy):
            return Rejection(
                "bad_type", f"accuracy_m must be a number, not {type(accuracy).__name__}"
            )
        if not accuracy >= 0:
            return Rejection("bad_type", f"accuracy_m must be >= 0, not {accuracy}")
    return None


def dlq_record(
    raw: bytes | None,
    rejection: Rejection,
    *,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    received_at_ms: int | None,
) -> dict[str, Any]:
    """The DLQ record of CONTRACT §1: the reason plus the whole original value, never lost;
    but of a `too_large` value only its first MAX_DLQ_RAW_BYTES bytes (`raw_truncated`, with
    `raw_bytes` its whole length), so a dead-letter record is never larger than what the
    input accepts."""
    raw = b"" if raw is None else raw
    truncated = rejection.reason == "too_large" and len(raw) > MAX_DLQ_RAW_BYTES
    text, encoding = _raw_text(raw[:MAX_DLQ_RAW_BYTES] if truncated else raw, truncated)
    record: dict[str, Any] = {
        "reason": rejection.reason,
        "detail": rejection.detail,
        "raw": text,
        "raw_encoding": encoding,
    }
    if truncated:
        record["raw_truncated"] = True
        record["raw_bytes"] = len(raw)
    record.update(
        topic=topic,
        partition=partition,
        offset=offset,
        received_at=None if received_at_ms is None else format_ms(received_at_ms),
    )
    return record


def _raw_text(raw: bytes, cut: bool) -> tuple[str, str]:
    """The bytes as UTF-8 text, or base64 when they are not UTF-8. A `cut` value may end in
    the middle of a character: that partial character is left out, and the rest stays text."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if cut and exc.reason == "unexpected end of data" and exc.end == len(raw):
            try:
                return raw[: exc.start].decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                pass
    return base64.b64encode(raw).decode("ascii"), "base64"


def is_unclassified(report: Report) -> bool:
    return report.category == UNCLASSIFIED


def future_problem(report: Report, now_ms: int, tolerance_ms: int) -> Rejection | None:
    """Live mode only: a report stamped further ahead of the wall clock than the tolerance."""
    if report.ts_ms > now_ms + tolerance_ms:
        ahead_s = (report.ts_ms - now_ms) / 1000.0
        return Rejection("future_timestamp", f"ts is {ahead_s:.0f} s ahead of the wall clock")
    return None
