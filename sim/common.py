"""Small shared helpers of the simulator, the evaluator and the naive baseline.

Kept local to ``sim`` so the test tooling does not depend on the detector it measures.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson

EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG_LAT = 111_320.0
QUARTER_HOUR_MS = 15 * 60 * 1000


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def offset_m(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """Move a point by metres; a flat-earth step is exact enough at city scale (< 0.1 % at 5 km)."""
    dlat = north_m / M_PER_DEG_LAT
    dlon = east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def parse_ts_ms(value: object) -> int:
    """RFC 3339 string (``Z`` or offset) or integer epoch milliseconds -> epoch milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"bad timestamp {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp without offset {value!r}")
        return round(parsed.timestamp() * 1000)
    raise ValueError(f"bad timestamp {value!r}")


def format_ts_utc(ts_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, the contract's output form."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def format_ts_offset(ts_ms: int, offset_min: int) -> str:
    """RFC 3339 with a numeric offset (``-08:00``) and milliseconds."""
    zone = timezone(timedelta(minutes=offset_min))
    moment = datetime.fromtimestamp(ts_ms // 1000, tz=zone)
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    return (
        moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}{sign}{hours:02d}:{minutes:02d}"
    )


def read_jsonl(path: Path) -> Iterator[dict]:
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({exc})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{line_no}: not a JSON object")
            yield obj


def write_jsonl(path: Path, objects: Iterable[dict]) -> None:
    with path.open("wb") as handle:
        for obj in objects:
            handle.write(orjson.dumps(obj) + b"\n")


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def geoincident_bin() -> str:
    """The `geoincident` command installed beside this interpreter (or on PATH), for the
    benchmarks that run it as a separate process."""
    beside = Path(sys.executable).parent / "geoincident"
    if beside.exists():
        return str(beside)
    found = shutil.which("geoincident")
    if found is None:
        sys.exit("geoincident is not installed: `make` installs it into .venv")
    return found
