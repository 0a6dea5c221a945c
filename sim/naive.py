"""The "afternoon" detector a user would write first, kept as the baseline to beat.

orjson decode, one H3 res-9 cell, category, a 15-minute tumbling bucket, a set of reporters
per (cell, category, bucket), and an ``opened`` event when a set reaches 5. Its known blind spots
are the point of it: incidents split by a cell edge or a bucket edge are missed, accounts sharing
a device count as independent, late or duplicate reports are not special, memory grows forever.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import h3
import orjson

from .common import QUARTER_HOUR_MS, format_ts_utc, parse_ts_ms
from .taxonomy import UNCLASSIFIED, resolve_category

NAIVE_RESOLUTION = 9
NAIVE_THRESHOLD = 5


@dataclass(slots=True)
class _Bucket:
    reporters: set[str] = field(default_factory=set)
    report_ids: list[str] = field(default_factory=list)
    lat_sum: float = 0.0
    lon_sum: float = 0.0
    first_ms: int | None = None
    opened: bool = False


def _iter_opened(lines: Iterable[bytes | str]) -> Iterator[dict]:
    buckets: dict[tuple[str, str, int], _Bucket] = {}
    for line in lines:
        try:
            report = orjson.loads(line)
            ts_ms = parse_ts_ms(report["ts"])
            lat = float(report["lat"])
            lon = float(report["lon"])
            reporter = report["reporter"]
            cell = h3.latlng_to_cell(lat, lon, NAIVE_RESOLUTION)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, h3.H3BaseException):
            continue
        category = resolve_category(report)
        if category == UNCLASSIFIED:
            continue
        key = (cell, category, ts_ms // QUARTER_HOUR_MS)
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket()
        bucket.reporters.add(reporter)
        bucket.report_ids.append(str(report.get("id", "")))
        bucket.lat_sum += lat
        bucket.lon_sum += lon
        bucket.first_ms = ts_ms if bucket.first_ms is None else min(bucket.first_ms, ts_ms)
        if not bucket.opened and len(bucket.reporters) >= NAIVE_THRESHOLD:
            bucket.opened = True
            yield _opened_event(key, bucket, ts_ms)


def _opened_event(key: tuple[str, str, int], bucket: _Bucket, ts_ms: int) -> dict:
    cell, category, slot = key
    count = len(bucket.report_ids)
    digest = hashlib.sha1(f"{cell}|{category}|{slot}".encode()).hexdigest()[:16]
    validated = format_ts_utc(ts_ms)
    return {
        "schema": 1,
        "incident_id": f"naive-{digest}",
        "event": "opened",
        "version": 1,
        "kind": "local",
        "category": category,
        "lat": round(bucket.lat_sum / count, 6),
        "lon": round(bucket.lon_sum / count, 6),
        "h3_cell": cell,
        "cells": [cell],
        "first_report_at": format_ts_utc(bucket.first_ms if bucket.first_ms is not None else ts_ms),
        "validated_at": validated,
        "last_report_at": validated,
        "emitted_at": validated,
        "report_count": count,
        "independent_reporters": len(bucket.reporters),
        "score": float(len(bucket.reporters)),
        "report_ids": list(bucket.report_ids),
    }


def run_naive(lines: Iterable[bytes | str]) -> list[dict]:
    """Opened events of the naive detector over JSONL report lines, in emission order."""
    return list(_iter_opened(lines))


def naive_loop(lines: Iterable[bytes | str]) -> int:
    """The bare loop for throughput benchmarks: same work, events counted instead of kept."""
    opened = 0
    for _ in _iter_opened(lines):
        opened += 1
    return opened
