"""A seeded, deterministic synthetic city: background reports plus planted incidents and decoys.

Everything derives from ``random.Random`` streams seeded by strings (``"<seed>/<family>/<i>"``),
which Python hashes with SHA-512: the same seed gives the same bytes on every platform, and
switching one family off leaves the other families' draws untouched (except where a placement
conflict had to be resolved).

Arrival order is event time plus a heavy-tailed delay that stays below the allowed lateness, so a
detector that honours the lateness bound must decide exactly as if the stream were sorted.

Busy cities are opt-in (``background_per_min``, ``hotspots``, ``daily_cycle``, ``outbreak``):
each draws from streams of its own, so with none of them set the output is byte for byte what
it was before they existed.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from types import MappingProxyType

import h3
import msgspec

from .common import (
    M_PER_DEG_LAT,
    QUARTER_HOUR_MS,
    format_ts_offset,
    format_ts_utc,
    haversine_m,
    offset_m,
    parse_ts_ms,
)
from .taxonomy import CATEGORY_NAMES, DEFAULT_TAXONOMY

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

LOCAL_FAMILIES = (
    "true",
    "late",
    "cell_edge",
    "window_edge",
    "close_pair",
    "staff",
    "sub_threshold",
    "repeater",
    "shared_device",
    "trickle",
    "scatter",
)
FAMILIES = (*LOCAL_FAMILIES, "surge")
# Not a --families family: planted by SimParams.outbreak (--outbreak), at most one per stream.
OUTBREAK_FAMILY = "outbreak"
SURGE_FAMILIES = ("surge", OUTBREAK_FAMILY)

EXPECT_BY_FAMILY = MappingProxyType(
    {
        "true": "incident",
        "late": "incident",
        "cell_edge": "incident",
        "window_edge": "incident",
        "close_pair": "incident",
        "staff": "none",
        "sub_threshold": "none",
        "repeater": "none",
        "shared_device": "none",
        "trickle": "none",
        "scatter": "none",
        "surge": "surge",
        OUTBREAK_FAMILY: "surge",
    }
)

# How many items of each family a default run plants (close_pair counts pairs: 2 truths each).
DEFAULT_FAMILY_COUNTS = MappingProxyType(
    {
        "true": 6,
        "late": 3,
        "cell_edge": 3,
        "window_edge": 3,
        "close_pair": 2,
        "staff": 2,
        "sub_threshold": 3,
        "repeater": 2,
        "shared_device": 2,
        "trickle": 2,
        "scatter": 2,
        "surge": 1,
    }
)

FAMILY_NOTES = MappingProxyType(
    {
        "true": "independent reporters within a few minutes and ~50 m",
        "late": "arrival order shuffled within the lateness bound",
        "cell_edge": "members on both sides of a shared H3 res-9 (and res-10) cell edge",
        "window_edge": "members straddle a quarter-hour boundary",
        "close_pair": "one of two simultaneous incidents of one category ~600 m apart",
        "staff": "a single staff report: validates alone only if source_weights.staff >= 5 "
        "(default 1.0), so a decoy under the default config",
        "sub_threshold": "4 independent reporters, one short of the threshold",
        "repeater": "one reporter posting 8 times",
        "shared_device": "8 accounts sharing one device",
        "trickle": "5 reporters one every 11 minutes: never 5 within 15 min",
        "scatter": "6 reporters spread over ~3 km",
        "surge": "district-wide surge (H3 res-6 region); its reports are spread over the region "
        "and should not form local incidents",
        OUTBREAK_FAMILY: "one category reported by many fresh reporters over a district disk "
        "centred on an H3 res-6 vertex, so it straddles several res-6 regions: one surge "
        "expected, and its local clumps linked to that surge",
    }
)


@dataclass(frozen=True, slots=True)
class BBox:
    lat_min: float
    lon_min: float
    lat_max: float
    lon_max: float

    def area_km2(self) -> float:
        height_m = haversine_m(self.lat_min, self.lon_min, self.lat_max, self.lon_min)
        mid_lat = (self.lat_min + self.lat_max) / 2
        width_m = haversine_m(mid_lat, self.lon_min, mid_lat, self.lon_max)
        return height_m * width_m / 1e6

    def contains(self, lat: float, lon: float) -> bool:
        return self.lat_min <= lat <= self.lat_max and self.lon_min <= lon <= self.lon_max

    def shrink_m(self, margin_m: float) -> BBox:
        lat_min, lon_min = offset_m(self.lat_min, self.lon_min, margin_m, margin_m)
        lat_max, lon_max = offset_m(self.lat_max, self.lon_max, -margin_m, -margin_m)
        if lat_min >= lat_max or lon_min >= lon_max:
            raise ValueError(f"bounding box is too small for a {margin_m:.0f} m margin")
        return BBox(lat_min, lon_min, lat_max, lon_max)


def _city_bbox(lat: float, lon: float, size_km: float) -> BBox:
    half_m = size_km * 500
    lat_min, lon_min = offset_m(lat, lon, -half_m, -half_m)
    lat_max, lon_max = offset_m(lat, lon, half_m, half_m)
    return BBox(round(lat_min, 5), round(lon_min, 5), round(lat_max, 5), round(lon_max, 5))


# A mid-size city, ~20 x 20 km around downtown Seattle.
DEFAULT_BBOX = _city_bbox(47.60, -122.33, 20.0)
DEFAULT_START_MS = parse_ts_ms("2026-11-24T06:00:00Z")

DOWNTOWN_RADIUS_M = 2000.0
# A street: about five blocks long, the carriageway and both pavements wide.
NIGHTLIFE_LENGTH_M = 1500.0
NIGHTLIFE_WIDTH_M = 70.0
HOTSPOT_FACTORS = MappingProxyType({"downtown": 5.0, "nightlife": 10.0})
HOTSPOT_NAMES = tuple(HOTSPOT_FACTORS)
# Big enough to reach into the three res-6 cells (~3.7 km edges) that meet at its centre.
OUTBREAK_RADIUS_M = 2500.0


class OptionError(ValueError):
    """A parameter that cannot be honoured, naming the command-line option it comes from."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True, slots=True)
class DailyCycle:
    """A rate multiplier over the UTC hours of event time: a half-cosine from ``low`` at
    ``low_hour`` up to ``high`` at ``high_hour``, and another one back down. Each half averages
    its two ends, so the day's mean is (low + high) / 2 whatever the two hours are."""

    low_hour: float
    low: float
    high_hour: float
    high: float

    @property
    def peak(self) -> float:
        return max(self.low, self.high)

    def factor(self, ts_ms: int) -> float:
        hour = (ts_ms % DAY_MS) / HOUR_MS
        rise_h = (self.high_hour - self.low_hour) % 24
        since_low_h = (hour - self.low_hour) % 24
        if since_low_h <= rise_h:
            up = since_low_h / rise_h
        else:
            up = 1.0 - (since_low_h - rise_h) / (24 - rise_h)
        return self.low + (self.high - self.low) * (1.0 - math.cos(math.pi * up)) / 2

    def to_json(self) -> dict:
        return {
            "low_hour_utc": self.low_hour,
            "low": self.low,
            "high_hour_utc": self.high_hour,
            "high": self.high,
        }


# Mean 1.0 each: the cycle moves reports around the day without changing the day's total.
CITY_CYCLE = DailyCycle(low_hour=4.0, low=0.35, high_hour=18.0, high=1.65)
NIGHTLIFE_CYCLE = DailyCycle(low_hour=10.0, low=0.2, high_hour=23.0, high=1.8)


@dataclass(frozen=True, slots=True)
class Hotspot:
    """A named district where background runs ``factor`` times the uniform rate."""

    name: str  # one of HOTSPOT_NAMES
    factor: float


@dataclass(frozen=True, slots=True)
class HotspotArea:
    """Where a hot spot lies in this city: a disk (downtown) or a thin strip (nightlife)."""

    name: str
    factor: float
    shape: str  # "disk" | "strip"
    lat: float  # centre
    lon: float
    radius_m: float = 0.0  # disk
    length_m: float = 0.0  # strip
    width_m: float = 0.0  # strip
    bearing_deg: float = 0.0  # strip direction, clockwise from north

    def area_km2(self) -> float:
        if self.shape == "disk":
            return math.pi * self.radius_m**2 / 1e6
        return self.length_m * self.width_m / 1e6

    @property
    def cycle(self) -> DailyCycle:
        return NIGHTLIFE_CYCLE if self.name == "nightlife" else CITY_CYCLE

    def sample(self, rng: random.Random) -> tuple[float, float]:
        if self.shape == "disk":
            return _in_disk(rng, self.lat, self.lon, self.radius_m)
        along_m = rng.uniform(-self.length_m / 2, self.length_m / 2)
        across_m = rng.uniform(-self.width_m / 2, self.width_m / 2)
        bearing = math.radians(self.bearing_deg)
        return offset_m(
            self.lat,
            self.lon,
            along_m * math.cos(bearing) - across_m * math.sin(bearing),
            along_m * math.sin(bearing) + across_m * math.cos(bearing),
        )

    def contains(self, lat: float, lon: float, margin_m: float = 0.0) -> bool:
        """Inside the shape grown by ``margin_m`` on every side (GPS noise spills over it)."""
        if self.shape == "disk":
            return haversine_m(self.lat, self.lon, lat, lon) <= self.radius_m + margin_m
        north_m = (lat - self.lat) * M_PER_DEG_LAT
        east_m = (lon - self.lon) * M_PER_DEG_LAT * math.cos(math.radians(self.lat))
        bearing = math.radians(self.bearing_deg)
        along_m = north_m * math.cos(bearing) + east_m * math.sin(bearing)
        across_m = -north_m * math.sin(bearing) + east_m * math.cos(bearing)
        return (
            abs(along_m) <= self.length_m / 2 + margin_m
            and abs(across_m) <= self.width_m / 2 + margin_m
        )

    def to_json(self) -> dict:
        shape: dict = (
            {"radius_m": self.radius_m}
            if self.shape == "disk"
            else {
                "length_m": self.length_m,
                "width_m": self.width_m,
                "bearing_deg": self.bearing_deg,
            }
        )
        return {
            "name": self.name,
            "factor": self.factor,
            "shape": self.shape,
            "lat": self.lat,
            "lon": self.lon,
            **shape,
        }


@dataclass(frozen=True, slots=True)
class Outbreak:
    """``count`` reports of one category, each from a fresh reporter, spread over a district
    disk within ``minutes``: the surge that should come out as one incident."""

    category: str
    count: int
    minutes: float
    radius_m: float = OUTBREAK_RADIUS_M


@dataclass(frozen=True, slots=True)
class SimParams:
    seed: int = 1
    bbox: BBox = DEFAULT_BBOX
    start_ms: int = DEFAULT_START_MS
    hours: float = 6.0
    # Background reports per hour for each category; per-category overrides win.
    background_per_hour: float = 6.0
    background_overrides: Mapping[str, float] = field(default_factory=dict)
    unclassified_per_hour: float = 2.0
    families: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_FAMILY_COUNTS))
    allowed_lateness_s: float = 120.0
    surge_factor: float = 20.0
    # A surge needs an absolute count too: 20x a quiet district can still be two reports.
    surge_min_reports: int = 60
    surge_minutes: float = 10.0
    # Busy cities. Uniform background over all categories together, split evenly among them;
    # wins over background_per_hour (per-category overrides still win over it).
    background_per_min: float | None = None
    hotspots: tuple[Hotspot, ...] = ()
    # Background follows CITY_CYCLE (a nightlife strip NIGHTLIFE_CYCLE) over the UTC hours.
    daily_cycle: bool = False
    outbreak: Outbreak | None = None

    @property
    def end_ms(self) -> int:
        return self.start_ms + round(self.hours * HOUR_MS)

    def background_rate(self, category: str) -> float:
        if category in self.background_overrides:
            return self.background_overrides[category]
        if self.background_per_min is not None:
            return self.background_per_min * 60 / len(CATEGORY_NAMES)
        return self.background_per_hour


@dataclass(frozen=True, slots=True)
class SimReport:
    ts_ms: int
    arrival_ms: int
    lat: float
    lon: float
    reporter: str
    device: str | None
    source: str | None
    accuracy_m: float | None
    category: str | None
    tags: tuple[str, ...] | None
    text: str | None
    lang: str | None
    ts_style: str  # "z" | "offset" | "epoch"
    tz_offset_min: int
    truth_id: str | None
    id: str = ""


# Every field but ``id``, the last one: every report gets its id this way, and
# dataclasses.replace would cost more than the rest of a report's bookkeeping in a dense stream.
_FIELDS_BEFORE_ID = attrgetter(*(f.name for f in fields(SimReport) if f.name != "id"))


def _with_id(report: SimReport, report_id: str) -> SimReport:
    return SimReport(*_FIELDS_BEFORE_ID(report), id=report_id)


class TruthItem(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    family: str
    category: str
    expect: str
    lat: float
    lon: float
    start: str
    end: str
    start_ms: int
    end_ms: int
    reporters: int
    independent: int
    reports: int
    devices: int
    radius_m: float
    report_ids: list[str]
    sources: dict[str, int]
    note: str = ""
    pair: str | None = None
    region: str | None = None
    rate_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class Simulation:
    params: SimParams
    reports: tuple[SimReport, ...]  # arrival order
    truth: tuple[TruthItem, ...]


@dataclass(frozen=True, slots=True)
class _Footprint:
    category: str
    lat: float
    lon: float
    radius_m: float
    start_ms: int
    end_ms: int
    # Background is kept away from planted items so it cannot tip a decoy over; an outbreak is
    # no decoy, and a hole in the background under it would fake a drop in its baseline.
    keep_out: bool = True


def _footprints_meet(placed: _Footprint, candidate: _Footprint) -> bool:
    # 75 min of time slack: resolve_after (60 min) + window (15 min), so one planted item can
    # never extend or revive another one's incident.
    slack_ms = 75 * MINUTE_MS
    if placed.category != candidate.category:
        return False
    if (
        candidate.start_ms > placed.end_ms + slack_ms
        or placed.start_ms > candidate.end_ms + slack_ms
    ):
        return False
    distance_m = haversine_m(placed.lat, placed.lon, candidate.lat, candidate.lon)
    return distance_m < placed.radius_m + candidate.radius_m + 1000


class _KeepOut:
    """Where background of a category must not fall: near a planted item it could tip a decoy
    over the threshold. Indexed by category once, since a dense stream asks for every report."""

    SLACK_MS = 30 * MINUTE_MS
    MARGIN_M = 600.0
    # Below the metres of one degree of latitude on the haversine sphere (~111,195 m), so the
    # cheap test never rules out a point that haversine would keep.
    _M_PER_DEG_LAT_LOW = 111_000.0

    def __init__(self, footprints: Iterable[_Footprint]) -> None:
        self._zones: dict[str, list[tuple[int, int, float, float, float]]] = {}
        for placed in footprints:
            if placed.keep_out:
                self._zones.setdefault(placed.category, []).append(
                    (
                        placed.start_ms - self.SLACK_MS,
                        placed.end_ms + self.SLACK_MS,
                        placed.lat,
                        placed.lon,
                        placed.radius_m + self.MARGIN_M,
                    )
                )

    def hit(self, category: str, lat: float, lon: float, ts_ms: int) -> bool:
        for first_ms, last_ms, z_lat, z_lon, reach_m in self._zones.get(category, ()):
            if not first_ms <= ts_ms <= last_ms:
                continue
            if abs(lat - z_lat) * self._M_PER_DEG_LAT_LOW >= reach_m:
                continue
            if haversine_m(z_lat, z_lon, lat, lon) < reach_m:
                return True
        return False


@dataclass(slots=True)
class _Plan:
    """A planted item before ids are assigned: its reports and the truth fields known up front."""

    truth_id: str
    family: str
    category: str
    lat: float
    lon: float
    reports: list[SimReport]
    pair: str | None = None
    region: str | None = None
    rate_ratio: float | None = None


class _World:
    """Generation state shared by all families: the reporters in use and the placed footprints."""

    def __init__(self, params: SimParams) -> None:
        self.params = params
        self.reporters: set[str] = set()
        self.device_of: dict[str, str | None] = {}
        self.footprints: list[_Footprint] = []
        self.outbreak: _Footprint | None = None
        self.truth_seq = 0

    def next_truth_id(self) -> str:
        self.truth_seq += 1
        return f"t-{self.params.seed}-{self.truth_seq}"

    def fresh_reporter(self, rng: random.Random, prefix: str = "u", device_p: float = 0.75) -> str:
        while True:
            reporter = f"{prefix}{rng.getrandbits(40):010x}"
            if reporter not in self.reporters:
                break
        self.reporters.add(reporter)
        self.device_of[reporter] = (
            f"d{rng.getrandbits(48):012x}" if rng.random() < device_p else None
        )
        return reporter

    def conflicts(self, candidate: _Footprint) -> bool:
        return any(_footprints_meet(placed, candidate) for placed in self.footprints)


# ---------------------------------------------------------------- report styles

_TEXTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "streetlight_out": (
            "Street light out at the corner, very dark here",
            "the lamp post by the bus stop is dark",
            "streetlight flickered and died",
        ),
        "traffic_signal_out": (
            "Traffic light dark at the intersection, cars confused",
            "traffic signal not working",
            "signal out at the crossing, be careful",
        ),
        "road_flooding": ("Road flooded after the rain", "flooding across both lanes"),
        "pothole": ("Huge pothole in the right lane", "pothole just damaged my tyre"),
        "water_main_break": (
            "water main burst, water everywhere",
            "water gushing from the pavement",
            "looks like a main break on our street",
        ),
        "downed_tree": ("tree down blocking the road", "fallen tree across the sidewalk"),
        "gas_leak": ("strong smell of gas near the school", "possible gas leak by the bakery"),
        "power_outage": (
            "power out on the whole block",
            "no power since ten minutes",
            "blackout in our building",
        ),
    }
)
_FILLER_TEXTS = ("please send someone", "reported via the city app", "thanks", "urgent")
_NOISE_TEXTS = (
    "lovely sunset over the lake tonight",
    "bus was late again",
    "loud music next door",
    "graffiti on the bridge",
)
_NOISE_TAGS = ("#seattle", "#fixit", "#commute")
_CITIZEN_SOURCES = (("app", 0.45), ("twitter", 0.25), ("web", 0.15), ("phone", 0.15))
_SOURCE_NAMES = tuple(name for name, _ in _CITIZEN_SOURCES)
# What random.choices would accumulate from the weights on every call: the same draws, once.
_SOURCE_CUM_WEIGHTS = tuple(itertools.accumulate(weight for _, weight in _CITIZEN_SOURCES))
_TZ_OFFSETS_MIN = (-480, -420, 0, 60, 330)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


_EXTRA_TAGS = MappingProxyType({c.name: c.tags for c in DEFAULT_TAXONOMY})


def _express(
    rng: random.Random, category: str | None
) -> tuple[str | None, tuple[str, ...] | None, str | None]:
    """How a person says it: explicit category, a hashtag, or only words (CONTRACT §1)."""
    if category is None:
        tags = (rng.choice(_NOISE_TAGS),) if rng.random() < 0.3 else None
        return None, tags, rng.choice(_NOISE_TEXTS)
    style = rng.random()
    if style < 0.3:
        spelled = rng.choice((category, _camel(category), category.replace("_", "-")))
        return spelled, None, rng.choice(_FILLER_TEXTS) if rng.random() < 0.5 else None
    if style < 0.7:
        tag = "#" + rng.choice((_camel(category), *_EXTRA_TAGS[category]))
        # An unknown tag first: resolution must take the first tag that names a category.
        tags = (rng.choice(_NOISE_TAGS), tag) if rng.random() < 0.25 else (tag,)
        return None, tags, rng.choice(_FILLER_TEXTS) if rng.random() < 0.3 else None
    return None, None, rng.choice(_TEXTS[category])


def _heavy_tail_delay_ms(rng: random.Random, cap_ms: int) -> int:
    # Pareto(alpha=1.2) from 0.5 s: most reports arrive within seconds, a few take a minute or more.
    delay_ms = 500.0 * (1.0 - rng.random()) ** (-1 / 1.2)
    return min(round(delay_ms), cap_ms)


def _delay_cap_ms(params: SimParams) -> int:
    # A margin under the bound: "arrives within the lateness" must hold after ms rounding too.
    return round(params.allowed_lateness_s * 1000) - 5_000


def _gps_fix(rng: random.Random, lat: float, lon: float, accuracy_m: float) -> tuple[float, float]:
    # accuracy_m is a ~95 % radius: noise sigma of half of it, clipped at the radius.
    north_m = max(-accuracy_m, min(accuracy_m, rng.gauss(0.0, accuracy_m / 2)))
    east_m = max(-accuracy_m, min(accuracy_m, rng.gauss(0.0, accuracy_m / 2)))
    scale = min(1.0, accuracy_m / max(1e-9, math.hypot(north_m, east_m)))
    return offset_m(lat, lon, north_m * scale, east_m * scale)


def _in_disk(rng: random.Random, lat: float, lon: float, radius_m: float) -> tuple[float, float]:
    distance_m = radius_m * math.sqrt(rng.random())
    bearing = rng.uniform(0, 2 * math.pi)
    return offset_m(lat, lon, distance_m * math.cos(bearing), distance_m * math.sin(bearing))


def _make_report(
    rng: random.Random,
    world: _World,
    *,
    category: str | None,
    reporter: str,
    ts_ms: int,
    true_lat: float,
    true_lon: float,
    accuracy_m: float,
    truth_id: str | None,
    source: str | None = None,
    delay_ms: int | None = None,
    device: str | None | bool = True,
    explicit: bool = False,
) -> SimReport:
    lat, lon = _gps_fix(rng, true_lat, true_lon, accuracy_m)
    if explicit and category is not None:
        category_field, tags, text = category, None, None
    else:
        category_field, tags, text = _express(rng, category)
    if source is None and rng.random() < 0.9:
        source = rng.choices(_SOURCE_NAMES, cum_weights=_SOURCE_CUM_WEIGHTS)[0]
    style_draw = rng.random()
    ts_style = "z" if style_draw < 0.45 else ("offset" if style_draw < 0.75 else "epoch")
    if delay_ms is None:
        delay_ms = _heavy_tail_delay_ms(rng, _delay_cap_ms(world.params))
    return SimReport(
        ts_ms=ts_ms,
        arrival_ms=ts_ms + delay_ms,
        lat=round(lat, 6),
        lon=round(lon, 6),
        reporter=reporter,
        device=world.device_of.get(reporter) if device is True else (device or None),
        source=source,
        accuracy_m=round(accuracy_m, 1) if rng.random() < 0.8 else None,
        category=category_field,
        tags=tags,
        text=text,
        lang="en" if rng.random() < 0.5 else None,
        ts_style=ts_style,
        tz_offset_min=rng.choice(_TZ_OFFSETS_MIN) if ts_style == "offset" else 0,
        truth_id=truth_id,
    )


# ---------------------------------------------------------------- placement


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a family needs from its placement: space and time footprint."""

    radius_m: float
    span_ms: int
    anchor: str = "free"  # "free" | "quarter" (a quarter-hour boundary in the middle)


_SHAPES = MappingProxyType(
    {
        "true": _Shape(60, 6 * MINUTE_MS),
        "late": _Shape(60, 2 * MINUTE_MS),
        "cell_edge": _Shape(80, 5 * MINUTE_MS),
        "window_edge": _Shape(60, 5 * MINUTE_MS, "quarter"),
        "close_pair": _Shape(700, 6 * MINUTE_MS),
        "staff": _Shape(60, MINUTE_MS),
        "sub_threshold": _Shape(60, 5 * MINUTE_MS),
        "repeater": _Shape(60, 10 * MINUTE_MS),
        "shared_device": _Shape(60, 6 * MINUTE_MS),
        "trickle": _Shape(60, 45 * MINUTE_MS),
        "scatter": _Shape(1600, 6 * MINUTE_MS),
    }
)


def _place(
    rng: random.Random, world: _World, family: str, category: str
) -> tuple[float, float, int]:
    """Centre and start time of a planted item that cannot interfere with an earlier one."""
    params = world.params
    shape = _SHAPES[family]
    area = params.bbox.shrink_m(2000)
    # Leave quiet time at both ends: the stream must run on past an item so watermarks pass it.
    first_ms = params.start_ms + 10 * MINUTE_MS
    last_ms = params.end_ms - 20 * MINUTE_MS - shape.span_ms
    if last_ms <= first_ms:
        raise ValueError(f"--hours {params.hours} is too short for the {family!r} family")
    for _ in range(500):
        lat = rng.uniform(area.lat_min, area.lat_max)
        lon = rng.uniform(area.lon_min, area.lon_max)
        start_ms = rng.randrange(first_ms, last_ms)
        if shape.anchor == "quarter":
            boundary_ms = -(-start_ms // QUARTER_HOUR_MS) * QUARTER_HOUR_MS
            start_ms = boundary_ms - shape.span_ms // 2
            if start_ms < first_ms or start_ms > last_ms:
                continue
        footprint = _Footprint(
            category, lat, lon, shape.radius_m, start_ms, start_ms + shape.span_ms
        )
        if not world.conflicts(footprint):
            world.footprints.append(footprint)
            return lat, lon, start_ms
    raise ValueError(f"no room to plant another {family!r} item: lower its count or add --hours")


def _spread_times(rng: random.Random, start_ms: int, span_ms: int, n: int) -> list[int]:
    return sorted(start_ms + rng.randrange(0, max(1, span_ms)) for _ in range(n))


def _cluster(
    rng: random.Random,
    world: _World,
    truth_id: str,
    category: str,
    lat: float,
    lon: float,
    times_ms: list[int],
    reporters: list[str],
    *,
    spread_m: float = 30.0,
    device: str | None | bool = True,
) -> list[SimReport]:
    """Reports near (lat, lon): true position within spread_m, GPS fix within its accuracy."""
    reports = []
    for ts_ms, reporter in zip(times_ms, reporters, strict=True):
        true_lat, true_lon = _in_disk(rng, lat, lon, spread_m)
        reports.append(
            _make_report(
                rng,
                world,
                category=category,
                reporter=reporter,
                ts_ms=ts_ms,
                true_lat=true_lat,
                true_lon=true_lon,
                accuracy_m=rng.uniform(3, 15),
                truth_id=truth_id,
                device=device,
            )
        )
    return reports


# ---------------------------------------------------------------- families


def _plant_true(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "true", category)
    truth_id = world.next_truth_id()
    n = rng.randint(5, 12)
    reporters = [world.fresh_reporter(rng) for _ in range(n)]
    if rng.random() < 0.3:
        # Someone reports twice: more reports than reporters, and still one reporter.
        reporters.append(reporters[rng.randrange(n)])
    times = _spread_times(rng, start_ms, rng.randint(2, 6) * MINUTE_MS, len(reporters))
    rng.shuffle(reporters)
    reports = _cluster(rng, world, truth_id, category, lat, lon, times, reporters)
    return [_Plan(truth_id, "true", category, lat, lon, reports)]


def _plant_late(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "late", category)
    truth_id = world.next_truth_id()
    n = rng.randint(5, 12)
    reporters = [world.fresh_reporter(rng) for _ in range(n)]
    # Span <= 90 s and arrivals packed within ~20 s after the last one: every delay < 110 s.
    times = _spread_times(rng, start_ms, rng.randint(45_000, 90_000), n)
    reports = _cluster(rng, world, truth_id, category, lat, lon, times, reporters)
    order = list(range(n))
    while order == sorted(order):
        rng.shuffle(order)
    last_ms = times[-1]
    arrivals = {idx: last_ms + 1_000 + rank * 1_500 for rank, idx in enumerate(order)}
    reports = [replace(r, arrival_ms=arrivals[i]) for i, r in enumerate(reports)]
    return [_Plan(truth_id, "late", category, lat, lon, reports)]


def _edge_frame(
    lat: float, lon: float, rng: random.Random
) -> tuple[float, float, tuple[float, float], tuple[float, float]]:
    """Midpoint of a res-9 cell edge, a unit vector along it and one across it (north, east)."""
    cell = h3.latlng_to_cell(lat, lon, 9)
    neighbour = rng.choice(sorted(h3.grid_ring(cell, 1)))
    edge = h3.cells_to_directed_edge(cell, neighbour)
    (a_lat, a_lon), (b_lat, b_lon) = h3.directed_edge_to_boundary(edge)[:2]
    mid_lat, mid_lon = (a_lat + b_lat) / 2, (a_lon + b_lon) / 2
    scale = math.cos(math.radians(mid_lat))
    along = ((b_lat - a_lat), (b_lon - a_lon) * scale)
    length = math.hypot(*along)
    along = (along[0] / length, along[1] / length)
    across = (-along[1], along[0])
    return mid_lat, mid_lon, along, across


def _plant_cell_edge(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "cell_edge", category)
    truth_id = world.next_truth_id()
    mid_lat, mid_lon, along, across = _edge_frame(lat, lon, rng)
    # Keep the footprint on the real planting spot (the edge midpoint is < 200 m away).
    world.footprints[-1] = replace(world.footprints[-1], lat=mid_lat, lon=mid_lon)
    n = rng.randint(5, 8)
    reporters = [world.fresh_reporter(rng) for _ in range(n)]
    times = _spread_times(rng, start_ms, rng.randint(2, 5) * MINUTE_MS, n)
    sides = [1 if k < n // 2 else -1 for k in range(n)]
    rng.shuffle(sides)
    for _ in range(200):
        reports = []
        for ts_ms, reporter, side in zip(times, reporters, sides, strict=True):
            along_m = rng.uniform(-40, 40)
            across_m = side * rng.uniform(10, 35)
            true_lat, true_lon = offset_m(
                mid_lat,
                mid_lon,
                along_m * along[0] + across_m * across[0],
                along_m * along[1] + across_m * across[1],
            )
            reports.append(
                _make_report(
                    rng,
                    world,
                    category=category,
                    reporter=reporter,
                    ts_ms=ts_ms,
                    true_lat=true_lat,
                    true_lon=true_lon,
                    accuracy_m=rng.uniform(2, 6),
                    truth_id=truth_id,
                )
            )
        if _straddles_cells(reports):
            return [_Plan(truth_id, "cell_edge", category, mid_lat, mid_lon, reports)]
    raise ValueError("could not plant a cell-edge item")  # pragma: no cover - geometry guarantees


def _straddles_cells(reports: list[SimReport]) -> bool:
    """>= 2 cells at res 9 and 10, and no res-9 cell holding 5 (a one-cell bucket must miss it)."""
    cells9: dict[str, int] = {}
    cells10 = set()
    for report in reports:
        cell9 = h3.latlng_to_cell(report.lat, report.lon, 9)
        cells9[cell9] = cells9.get(cell9, 0) + 1
        cells10.add(h3.latlng_to_cell(report.lat, report.lon, 10))
    return len(cells9) >= 2 and len(cells10) >= 2 and max(cells9.values()) < 5


def _plant_window_edge(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "window_edge", category)
    truth_id = world.next_truth_id()
    boundary_ms = start_ms + _SHAPES["window_edge"].span_ms // 2
    n = rng.randint(5, 8)
    reporters = [world.fresh_reporter(rng) for _ in range(n)]
    # At most 4 on either side: a tumbling 15-min bucket never sees 5.
    before = n // 2
    half_ms = 150_000
    times = sorted(
        [boundary_ms - rng.randint(1_000, half_ms) for _ in range(before)]
        + [boundary_ms + rng.randint(0, half_ms) for _ in range(n - before)]
    )
    reports = _cluster(rng, world, truth_id, category, lat, lon, times, reporters)
    return [_Plan(truth_id, "window_edge", category, lat, lon, reports)]


def _plant_close_pair(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "close_pair", category)
    bearing = rng.uniform(0, 2 * math.pi)
    distance_m = rng.uniform(570, 630)
    centres = [
        offset_m(
            lat, lon, -distance_m / 2 * math.cos(bearing), -distance_m / 2 * math.sin(bearing)
        ),
        offset_m(lat, lon, distance_m / 2 * math.cos(bearing), distance_m / 2 * math.sin(bearing)),
    ]
    truth_ids = [world.next_truth_id(), world.next_truth_id()]
    plans = []
    for k, (c_lat, c_lon) in enumerate(centres):
        n = rng.randint(5, 8)
        reporters = [world.fresh_reporter(rng) for _ in range(n)]
        times = _spread_times(rng, start_ms + k * 30_000, rng.randint(2, 5) * MINUTE_MS, n)
        reports = _cluster(rng, world, truth_ids[k], category, c_lat, c_lon, times, reporters)
        plans.append(
            _Plan(
                truth_ids[k], "close_pair", category, c_lat, c_lon, reports, pair=truth_ids[1 - k]
            )
        )
    return plans


def _plant_staff(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "staff", category)
    truth_id = world.next_truth_id()
    reporter = world.fresh_reporter(rng, prefix="s", device_p=1.0)
    report = _make_report(
        rng,
        world,
        category=category,
        reporter=reporter,
        ts_ms=start_ms,
        true_lat=lat,
        true_lon=lon,
        accuracy_m=rng.uniform(3, 8),
        truth_id=truth_id,
        source="staff",
        explicit=True,
    )
    return [_Plan(truth_id, "staff", category, lat, lon, [report])]


def _plant_sub_threshold(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "sub_threshold", category)
    truth_id = world.next_truth_id()
    reporters = [world.fresh_reporter(rng, device_p=1.0) for _ in range(4)]
    times = _spread_times(rng, start_ms, rng.randint(2, 5) * MINUTE_MS, 4)
    reports = _cluster(rng, world, truth_id, category, lat, lon, times, reporters)
    return [_Plan(truth_id, "sub_threshold", category, lat, lon, reports)]


def _plant_repeater(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "repeater", category)
    truth_id = world.next_truth_id()
    reporter = world.fresh_reporter(rng)
    times = _spread_times(rng, start_ms, rng.randint(3, 10) * MINUTE_MS, 8)
    reports = _cluster(rng, world, truth_id, category, lat, lon, times, [reporter] * 8)
    return [_Plan(truth_id, "repeater", category, lat, lon, reports)]


def _plant_shared_device(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "shared_device", category)
    truth_id = world.next_truth_id()
    device = f"d{rng.getrandbits(48):012x}"
    reporters = [world.fresh_reporter(rng) for _ in range(8)]
    times = _spread_times(rng, start_ms, rng.randint(2, 6) * MINUTE_MS, 8)
    reports = _cluster(rng, world, truth_id, category, lat, lon, times, reporters, device=device)
    return [_Plan(truth_id, "shared_device", category, lat, lon, reports)]


def _plant_trickle(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "trickle", category)
    truth_id = world.next_truth_id()
    reporters = [world.fresh_reporter(rng) for _ in range(5)]
    # 11 min apart, +-15 s: consecutive gaps stay >= 10.5 min, so any 15 min holds at most 2.
    times = [start_ms + k * 11 * MINUTE_MS + rng.randint(-15_000, 15_000) for k in range(5)]
    reports = _cluster(rng, world, truth_id, category, lat, lon, times, reporters)
    return [_Plan(truth_id, "trickle", category, lat, lon, reports)]


def _plant_scatter(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    lat, lon, start_ms = _place(rng, world, "scatter", category)
    truth_id = world.next_truth_id()
    reporters = [world.fresh_reporter(rng) for _ in range(6)]
    times = _spread_times(rng, start_ms, rng.randint(3, 6) * MINUTE_MS, 6)
    phase = rng.uniform(0, 2 * math.pi)
    reports = []
    # Six points on a ~1.3 km circle: neighbours ~1.3 km apart, the farthest ~2.7 km.
    for k, (ts_ms, reporter) in enumerate(zip(times, reporters, strict=True)):
        bearing = phase + k * math.pi / 3 + rng.uniform(-0.15, 0.15)
        distance_m = rng.uniform(1200, 1400)
        true_lat, true_lon = offset_m(
            lat, lon, distance_m * math.cos(bearing), distance_m * math.sin(bearing)
        )
        reports.append(
            _make_report(
                rng,
                world,
                category=category,
                reporter=reporter,
                ts_ms=ts_ms,
                true_lat=true_lat,
                true_lon=true_lon,
                accuracy_m=rng.uniform(3, 15),
                truth_id=truth_id,
            )
        )
    return [_Plan(truth_id, "scatter", category, lat, lon, reports)]


_PLANTERS: Mapping[str, Callable[[random.Random, _World, str], list[_Plan]]] = MappingProxyType(
    {
        "true": _plant_true,
        "late": _plant_late,
        "cell_edge": _plant_cell_edge,
        "window_edge": _plant_window_edge,
        "close_pair": _plant_close_pair,
        "staff": _plant_staff,
        "sub_threshold": _plant_sub_threshold,
        "repeater": _plant_repeater,
        "shared_device": _plant_shared_device,
        "trickle": _plant_trickle,
        "scatter": _plant_scatter,
    }
)


def _region_inside(params: SimParams, rng: random.Random) -> str:
    area = params.bbox.shrink_m(3000)
    for _ in range(200):
        cell = h3.latlng_to_cell(
            rng.uniform(area.lat_min, area.lat_max), rng.uniform(area.lon_min, area.lon_max), 6
        )
        if all(params.bbox.contains(v_lat, v_lon) for v_lat, v_lon in h3.cell_to_boundary(cell)):
            return cell
    raise ValueError("the bounding box is too small to hold an H3 res-6 surge region")


def _plant_surge(rng: random.Random, world: _World, category: str) -> list[_Plan]:
    params = world.params
    span_ms = round(params.surge_minutes * MINUTE_MS)
    # Late in the stream, so a long-term baseline exists by then.
    first_ms = params.start_ms + (params.end_ms - params.start_ms) // 2
    last_ms = params.end_ms - 20 * MINUTE_MS - span_ms
    if last_ms <= first_ms:
        raise ValueError(f"--hours {params.hours} is too short for the 'surge' family")
    for _ in range(200):
        region = _region_inside(params, rng)
        start_ms = rng.randrange(first_ms, last_ms)
        # Only an outbreak is avoided (the first draw stands without one): a surge beside it in
        # the same category could not be told apart from it.
        if world.outbreak is None or not _footprints_meet(
            world.outbreak, _region_footprint(category, region, start_ms, span_ms)
        ):
            break
    else:
        raise OptionError("--outbreak", "no room for the 'surge' family beside the outbreak")
    region_rate_per_h = params.background_rate(category) * (
        h3.cell_area(region, unit="km^2") / params.bbox.area_km2()
    )
    count = max(
        round(params.surge_factor * region_rate_per_h * params.surge_minutes / 60),
        params.surge_min_reports,
    )
    rate_ratio = (
        round(count / (params.surge_minutes / 60) / region_rate_per_h, 1)
        if region_rate_per_h > 0
        else None
    )
    c_lat, c_lon = h3.cell_to_latlng(region)
    lat_min, lat_max, lon_min, lon_max = _cell_bounds(region)
    truth_id = world.next_truth_id()
    keep_out = _KeepOut(world.footprints)
    reports = []
    for ts_ms in _spread_times(rng, start_ms, span_ms, count):
        reporter = world.fresh_reporter(rng)
        while True:
            report = _make_report(
                rng,
                world,
                category=category,
                reporter=reporter,
                ts_ms=ts_ms,
                true_lat=rng.uniform(lat_min, lat_max),
                true_lon=rng.uniform(lon_min, lon_max),
                accuracy_m=rng.uniform(3, 40),
                truth_id=truth_id,
            )
            if h3.latlng_to_cell(report.lat, report.lon, 6) == region and not keep_out.hit(
                category, report.lat, report.lon, ts_ms
            ):
                break
        # Surges are counted per language too: one language, so the whole surge is one signal.
        reports.append(replace(report, lang="en"))
    return [
        _Plan(
            truth_id,
            "surge",
            category,
            c_lat,
            c_lon,
            reports,
            region=region,
            rate_ratio=rate_ratio,
        )
    ]


def _region_footprint(category: str, region: str, start_ms: int, span_ms: int) -> _Footprint:
    c_lat, c_lon = h3.cell_to_latlng(region)
    circumradius_m = max(
        haversine_m(c_lat, c_lon, v_lat, v_lon) for v_lat, v_lon in h3.cell_to_boundary(region)
    )
    return _Footprint(category, c_lat, c_lon, circumradius_m, start_ms, start_ms + span_ms)


def _reserve_outbreak(world: _World) -> None:
    """Place the outbreak before any family, so the families' placement steps around it."""
    params = world.params
    spec = params.outbreak
    assert spec is not None
    rng = random.Random(f"{params.seed}/outbreak/place")
    span_ms = round(spec.minutes * MINUTE_MS)
    # In the second half, so a long-term baseline exists by then; ending 10 min before the end
    # of the stream, so the watermark passes it and a surge detector has had time to fire.
    first_ms = params.start_ms + (params.end_ms - params.start_ms) // 2
    last_ms = params.end_ms - 10 * MINUTE_MS - span_ms
    if last_ms <= first_ms:
        raise OptionError(
            "--outbreak",
            f"an outbreak of {spec.minutes:g} min does not fit in --hours {params.hours:g}: it "
            "starts in the second half and ends at least 10 min before the end",
        )
    too_small = f"the bounding box is too small for an outbreak of radius {spec.radius_m:g} m"
    try:
        area = params.bbox.shrink_m(spec.radius_m + 500)
    except ValueError:
        raise OptionError("--outbreak", too_small) from None
    # A res-6 vertex joins three cells (~3.7 km edges): a disk around it reaches into all three,
    # so a detector that keeps one surge per cell would report the one outbreak several times.
    for _ in range(500):
        cell = h3.latlng_to_cell(
            rng.uniform(area.lat_min, area.lat_max), rng.uniform(area.lon_min, area.lon_max), 6
        )
        lat, lon = rng.choice(h3.cell_to_boundary(cell))
        if area.contains(lat, lon):
            break
    else:
        raise OptionError("--outbreak", too_small)
    start_ms = rng.randrange(first_ms, last_ms)
    world.outbreak = _Footprint(
        spec.category, lat, lon, spec.radius_m, start_ms, start_ms + span_ms, keep_out=False
    )
    world.footprints.append(world.outbreak)


def _plant_outbreak(world: _World) -> _Plan:
    params = world.params
    spec = params.outbreak
    site = world.outbreak
    assert spec is not None and site is not None
    rng = random.Random(f"{params.seed}/outbreak/reports")
    truth_id = world.next_truth_id()
    reports = []
    for ts_ms in _spread_times(rng, site.start_ms, site.end_ms - site.start_ms, spec.count):
        reporter = world.fresh_reporter(rng)
        true_lat, true_lon = _in_disk(rng, site.lat, site.lon, spec.radius_m)
        report = _make_report(
            rng,
            world,
            category=spec.category,
            reporter=reporter,
            ts_ms=ts_ms,
            true_lat=true_lat,
            true_lon=true_lon,
            accuracy_m=rng.uniform(3, 40),
            truth_id=truth_id,
        )
        # One language, as for the surge family: the outbreak is one signal, and the regions it
        # straddles are the split under test, not languages.
        reports.append(replace(report, lang="en"))
    regions = sorted({h3.latlng_to_cell(r.lat, r.lon, 6) for r in reports})
    disk_rate_per_h = params.background_rate(spec.category) * (
        math.pi * spec.radius_m**2 / 1e6 / params.bbox.area_km2()
    )
    rate_ratio = (
        round(spec.count / (spec.minutes / 60) / disk_rate_per_h, 1)
        if disk_rate_per_h > 0
        else None
    )
    return _Plan(
        truth_id,
        OUTBREAK_FAMILY,
        spec.category,
        site.lat,
        site.lon,
        reports,
        region=",".join(regions),
        rate_ratio=rate_ratio,
    )


def _cell_bounds(cell: str) -> tuple[float, float, float, float]:
    boundary = h3.cell_to_boundary(cell)
    lats = [v[0] for v in boundary]
    lons = [v[1] for v in boundary]
    return min(lats), max(lats), min(lons), max(lons)


def _poisson_times(
    rng: random.Random,
    start_ms: int,
    end_ms: int,
    rate_per_h: float,
    cycle: DailyCycle | None = None,
    thin_rng: random.Random | None = None,
) -> Iterator[int]:
    """Event times of a Poisson process; with a cycle, an inhomogeneous one by thinning: draw at
    the cycle's peak rate and keep each time with probability factor / peak."""
    peak = cycle.peak if cycle is not None else 1.0
    ts_ms = start_ms
    while True:
        # Exponential gaps.
        ts_ms += round(rng.expovariate(rate_per_h * peak) * HOUR_MS)
        if ts_ms >= end_ms:
            return
        if cycle is not None and thin_rng is not None:
            if thin_rng.random() * peak >= cycle.factor(ts_ms):
                continue
        yield ts_ms


def _background(world: _World) -> list[SimReport]:
    params = world.params
    bbox = params.bbox
    keep_out = _KeepOut(world.footprints)
    reports: list[SimReport] = []
    streams: list[tuple[str | None, float]] = [
        (c, params.background_rate(c)) for c in CATEGORY_NAMES
    ]
    streams.append((None, params.unclassified_per_hour))
    reporter_pool: list[str] = []

    def emit(
        category: str | None,
        rng: random.Random,
        times_ms: Iterable[int],
        sample: Callable[[random.Random], tuple[float, float]],
    ) -> None:
        for ts_ms in times_ms:
            for _ in range(20):
                lat, lon = sample(rng)
                if category is None or not keep_out.hit(category, lat, lon, ts_ms):
                    break
            else:
                continue
            if reporter_pool and rng.random() < 0.1:
                reporter = rng.choice(reporter_pool)
            else:
                reporter = world.fresh_reporter(rng)
                reporter_pool.append(reporter)
            reports.append(
                _make_report(
                    rng,
                    world,
                    category=category,
                    reporter=reporter,
                    ts_ms=ts_ms,
                    true_lat=lat,
                    true_lon=lon,
                    accuracy_m=rng.uniform(3, 40),
                    truth_id=None,
                )
            )

    def uniform(rng: random.Random) -> tuple[float, float]:
        return rng.uniform(bbox.lat_min, bbox.lat_max), rng.uniform(bbox.lon_min, bbox.lon_max)

    for category, rate_per_h in streams:
        if rate_per_h <= 0:
            continue
        name = category or "unclassified"
        rng = random.Random(f"{params.seed}/background/{name}")
        times = _poisson_times(
            rng,
            params.start_ms,
            params.end_ms,
            rate_per_h,
            CITY_CYCLE if params.daily_cycle else None,
            random.Random(f"{params.seed}/daily/{name}"),
        )
        emit(category, rng, times, uniform)

    # A hot spot adds (factor - 1) times the uniform rate over its own area on top of the
    # uniform background already there: inside it the density is factor times the city's.
    bbox_km2 = bbox.area_km2()
    for area in hotspot_areas(params):
        for category, rate_per_h in streams:
            extra_per_h = rate_per_h * (area.factor - 1) * area.area_km2() / bbox_km2
            if extra_per_h <= 0:
                continue
            name = f"{area.name}/{category or 'unclassified'}"
            rng = random.Random(f"{params.seed}/hotspot/{name}")
            times = _poisson_times(
                rng,
                params.start_ms,
                params.end_ms,
                extra_per_h,
                area.cycle if params.daily_cycle else None,
                random.Random(f"{params.seed}/daily/{name}"),
            )
            emit(category, rng, times, area.sample)
    return reports


def hotspot_areas(params: SimParams) -> tuple[HotspotArea, ...]:
    """The hot spots of ``params.hotspots`` placed in this city. Each place depends on the seed
    and the box only, never on which other hot spots are on."""
    downtown = _downtown_centre(params)
    areas = []
    for hotspot in params.hotspots:
        if hotspot.name == "downtown":
            lat, lon = downtown
            areas.append(
                HotspotArea(
                    "downtown", hotspot.factor, "disk", lat, lon, radius_m=DOWNTOWN_RADIUS_M
                )
            )
        elif hotspot.name == "nightlife":
            lat, lon, bearing_deg = _nightlife_street(params, downtown)
            areas.append(
                HotspotArea(
                    "nightlife",
                    hotspot.factor,
                    "strip",
                    lat,
                    lon,
                    length_m=NIGHTLIFE_LENGTH_M,
                    width_m=NIGHTLIFE_WIDTH_M,
                    bearing_deg=bearing_deg,
                )
            )
        else:
            raise ValueError(f"unknown hot spot {hotspot.name!r}")
    return tuple(areas)


def _downtown_centre(params: SimParams) -> tuple[float, float]:
    rng = random.Random(f"{params.seed}/hotspot/downtown/place")
    try:
        area = params.bbox.shrink_m(DOWNTOWN_RADIUS_M + 1000)
    except ValueError:
        raise OptionError(
            "--hotspots", "the bounding box is too small for the downtown hot spot"
        ) from None
    lat = rng.uniform(area.lat_min, area.lat_max)
    lon = rng.uniform(area.lon_min, area.lon_max)
    return round(lat, 6), round(lon, 6)


def _nightlife_street(
    params: SimParams, downtown: tuple[float, float]
) -> tuple[float, float, float]:
    """Centre and bearing of the nightlife street: just outside downtown, never inside it (the
    two densities would add up and neither would be what it claims)."""
    rng = random.Random(f"{params.seed}/hotspot/nightlife/place")
    try:
        area = params.bbox.shrink_m(NIGHTLIFE_LENGTH_M / 2 + 500)
    except ValueError:
        raise OptionError(
            "--hotspots", "the bounding box is too small for the nightlife hot spot"
        ) from None
    half_m = NIGHTLIFE_LENGTH_M / 2
    for _ in range(500):
        # At least half a street length past the downtown edge: the nearest end stays outside.
        distance_m = rng.uniform(DOWNTOWN_RADIUS_M + half_m + 150, DOWNTOWN_RADIUS_M + 3000)
        towards = rng.uniform(0, 2 * math.pi)
        lat, lon = offset_m(
            downtown[0], downtown[1], distance_m * math.cos(towards), distance_m * math.sin(towards)
        )
        bearing_deg = round(rng.uniform(0, 180), 1)
        if area.contains(lat, lon):
            return round(lat, 6), round(lon, 6), bearing_deg
    raise OptionError("--hotspots", "the bounding box is too small for the nightlife hot spot")


def _independent_count(reports: Iterable[SimReport]) -> int:
    """Reporters joined by a shared device count once (union-find over reporter/device)."""
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    reporters = set()
    for report in reports:
        reporters.add("r:" + report.reporter)
        if report.device:
            parent[find("r:" + report.reporter)] = find("d:" + report.device)
    return len({find(r) for r in reporters})


def _truth_item(plan: _Plan, reports: list[SimReport]) -> TruthItem:
    start_ms = min(r.ts_ms for r in reports)
    end_ms = max(r.ts_ms for r in reports)
    sources: dict[str, int] = {}
    for report in reports:
        key = report.source or "unknown"
        sources[key] = sources.get(key, 0) + 1
    return TruthItem(
        id=plan.truth_id,
        family=plan.family,
        category=plan.category,
        expect=EXPECT_BY_FAMILY[plan.family],
        lat=round(plan.lat, 6),
        lon=round(plan.lon, 6),
        start=format_ts_utc(start_ms),
        end=format_ts_utc(end_ms),
        start_ms=start_ms,
        end_ms=end_ms,
        reporters=len({r.reporter for r in reports}),
        independent=_independent_count(reports),
        reports=len(reports),
        devices=len({r.device for r in reports if r.device}),
        radius_m=round(max(haversine_m(plan.lat, plan.lon, r.lat, r.lon) for r in reports), 1),
        report_ids=[r.id for r in reports],
        sources=dict(sorted(sources.items())),
        note=FAMILY_NOTES[plan.family],
        pair=plan.pair,
        region=plan.region,
        rate_ratio=plan.rate_ratio,
    )


def _check_busy_params(params: SimParams) -> None:
    if params.background_per_min is not None and params.background_per_min < 0:
        raise ValueError("background_per_min must be >= 0")
    names = [h.name for h in params.hotspots]
    if len(names) != len(set(names)):
        raise ValueError(f"a hot spot is named twice: {', '.join(names)}")
    for hotspot in params.hotspots:
        if hotspot.name not in HOTSPOT_FACTORS:
            raise ValueError(
                f"unknown hot spot {hotspot.name!r}: expected one of {', '.join(HOTSPOT_NAMES)}"
            )
        if not hotspot.factor >= 1:
            raise ValueError(f"hot spot {hotspot.name!r}: factor must be >= 1")
    spec = params.outbreak
    if spec is not None:
        if spec.category not in CATEGORY_NAMES:
            raise ValueError(
                f"outbreak category {spec.category!r} is not one of {', '.join(CATEGORY_NAMES)}"
            )
        if spec.count < 1 or not spec.minutes > 0 or not spec.radius_m > 0:
            raise ValueError("outbreak count, minutes and radius must be > 0")


def simulate(params: SimParams) -> Simulation:
    unknown = set(params.families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families: {', '.join(sorted(unknown))}")
    if params.hours <= 0:
        raise ValueError("hours must be > 0")
    _check_busy_params(params)
    world = _World(params)
    if params.outbreak is not None:
        _reserve_outbreak(world)
    plans: list[_Plan] = []
    for family in FAMILIES:
        for index in range(params.families.get(family, 0)):
            rng = random.Random(f"{params.seed}/{family}/{index}")
            category = rng.choice(CATEGORY_NAMES)
            planter = _plant_surge if family == "surge" else _PLANTERS[family]
            plans.extend(planter(rng, world, category))
    # Planted last, so the families' truth ids are the same with or without it.
    if params.outbreak is not None:
        plans.append(_plant_outbreak(world))
    drafts: list[SimReport | None] = [r for plan in plans for r in plan.reports]
    drafts += _background(world)
    # Stable total order: arrival, then event time, then generation order.
    order = sorted(range(len(drafts)), key=lambda i: (drafts[i].arrival_ms, drafts[i].ts_ms, i))
    ordered = []
    for n, i in enumerate(order, start=1):
        ordered.append(_with_id(drafts[i], f"r-{params.seed}-{n}"))
        # A dense stream holds a million reports: never two copies of all of them at once.
        drafts[i] = None
    reports = tuple(ordered)
    members: dict[str, list[SimReport]] = {}
    for report in reports:
        if report.truth_id is not None:
            members.setdefault(report.truth_id, []).append(report)
    truth = tuple(_truth_item(plan, members[plan.truth_id]) for plan in plans)
    return Simulation(params=params, reports=reports, truth=truth)


# ---------------------------------------------------------------- output


def report_to_json(report: SimReport, shift_ms: int = 0) -> dict:
    """The contract's report object; ``shift_ms`` moves event time (live mode starts "now")."""
    ts_ms = report.ts_ms + shift_ms
    ts: str | int
    if report.ts_style == "epoch":
        ts = ts_ms
    elif report.ts_style == "offset":
        ts = format_ts_offset(ts_ms, report.tz_offset_min)
    else:
        ts = format_ts_utc(ts_ms)
    obj: dict = {
        "id": report.id,
        "ts": ts,
        "lat": report.lat,
        "lon": report.lon,
        "reporter": report.reporter,
    }
    if report.source is not None:
        obj["source"] = report.source
    if report.device is not None:
        obj["device"] = report.device
    if report.accuracy_m is not None:
        obj["accuracy_m"] = report.accuracy_m
    if report.category is not None:
        obj["category"] = report.category
    if report.tags is not None:
        obj["tags"] = list(report.tags)
    if report.text is not None:
        obj["text"] = report.text
    if report.lang is not None:
        obj["lang"] = report.lang
    return obj


def truth_to_json(sim: Simulation, shift_ms: int = 0) -> dict:
    """The truth document; ``shift_ms`` moves its times like ``report_to_json`` (live mode)."""
    params = sim.params
    counts = {family: 0 for family in FAMILIES}
    for item in sim.truth:
        # An outbreak key appears only with an outbreak: a default truth file stays as it was.
        counts[item.family] = counts.get(item.family, 0) + 1
    items = sim.truth
    if shift_ms:
        items = tuple(
            msgspec.structs.replace(
                item,
                start=format_ts_utc(item.start_ms + shift_ms),
                end=format_ts_utc(item.end_ms + shift_ms),
                start_ms=item.start_ms + shift_ms,
                end_ms=item.end_ms + shift_ms,
            )
            for item in items
        )
    doc: dict = {
        "schema": 1,
        "seed": params.seed,
        "start": format_ts_utc(params.start_ms + shift_ms),
        "end": format_ts_utc(params.end_ms + shift_ms),
        "hours": params.hours,
        "bbox": [
            params.bbox.lat_min,
            params.bbox.lon_min,
            params.bbox.lat_max,
            params.bbox.lon_max,
        ],
        "allowed_lateness_s": params.allowed_lateness_s,
        "background_per_hour": {c: params.background_rate(c) for c in CATEGORY_NAMES},
    }
    # The busy-city keys only when set: without them a truth file is byte for byte the old one.
    if params.background_per_min is not None:
        doc["background_per_min"] = float(params.background_per_min)
    if params.hotspots:
        doc["hotspots"] = [area.to_json() for area in hotspot_areas(params)]
    if params.daily_cycle:
        doc["daily_cycle"] = {"city": CITY_CYCLE.to_json(), "nightlife": NIGHTLIFE_CYCLE.to_json()}
    if params.outbreak is not None:
        doc["outbreak"] = {
            "category": params.outbreak.category,
            "count": params.outbreak.count,
            "minutes": params.outbreak.minutes,
            "radius_m": params.outbreak.radius_m,
        }
    doc["report_count"] = len(sim.reports)
    doc["counts"] = counts
    doc["items"] = [msgspec.to_builtins(item) for item in items]
    return doc


def parse_families(spec: str) -> dict[str, int]:
    """``"true=6,surge=0"`` -> counts over the defaults; ``none`` sets every count to 0 first,
    so ``"none,true=2"`` plants two true incidents and nothing else."""
    counts = dict(DEFAULT_FAMILY_COUNTS)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part == "none":
            counts = {family: 0 for family in FAMILIES}
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in FAMILIES:
            raise ValueError(
                f"expected FAMILY=COUNT with FAMILY in {', '.join(FAMILIES)}: {part!r}"
            )
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"count of {name!r} must be an integer: {value!r}") from None
        if count < 0:
            raise ValueError(f"count of {name!r} must be >= 0")
        counts[name] = count
    return counts


def parse_bbox(spec: str) -> BBox:
    """``"lat_min,lon_min,lat_max,lon_max"``."""
    try:
        lat_min, lon_min, lat_max, lon_max = (float(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"expected LAT_MIN,LON_MIN,LAT_MAX,LON_MAX: {spec!r}") from None
    if not (-90 <= lat_min < lat_max <= 90 and -180 <= lon_min < lon_max <= 180):
        raise ValueError(f"not a bounding box: {spec!r}")
    return BBox(lat_min, lon_min, lat_max, lon_max)


def parse_hotspots(spec: str) -> tuple[Hotspot, ...]:
    """``"downtown,nightlife"``, each name optionally ``=FACTOR`` (``"downtown=8"``)."""
    hotspots = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if name not in HOTSPOT_FACTORS:
            raise ValueError(
                f"expected NAME[=FACTOR] with NAME in {', '.join(HOTSPOT_NAMES)}: {part!r}"
            )
        factor = HOTSPOT_FACTORS[name]
        if sep:
            try:
                factor = float(value)
            except ValueError:
                raise ValueError(f"factor of {name!r} must be a number: {value!r}") from None
            if not factor >= 1:
                raise ValueError(f"factor of {name!r} must be >= 1 (times the uniform rate)")
        if any(h.name == name for h in hotspots):
            raise ValueError(f"hot spot {name!r} is given twice")
        hotspots.append(Hotspot(name, factor))
    return tuple(hotspots)


def parse_outbreak(spec: str) -> Outbreak:
    """``"CATEGORY:COUNT:MINUTES[:RADIUS_M]"``, e.g. ``"power_outage:5000:10"``."""
    parts = [p.strip() for p in spec.split(":")]
    if len(parts) not in (3, 4):
        raise ValueError(f"expected CATEGORY:COUNT:MINUTES[:RADIUS_M]: {spec!r}")
    category = parts[0]
    if category not in CATEGORY_NAMES:
        raise ValueError(f"category {category!r} is not one of {', '.join(CATEGORY_NAMES)}")
    try:
        count = int(parts[1])
        minutes = float(parts[2])
        radius_m = float(parts[3]) if len(parts) == 4 else OUTBREAK_RADIUS_M
    except ValueError:
        raise ValueError(
            f"COUNT must be an integer, MINUTES and RADIUS_M numbers: {spec!r}"
        ) from None
    if count < 1 or not minutes > 0 or not radius_m > 0:
        raise ValueError(f"COUNT, MINUTES and RADIUS_M must be > 0: {spec!r}")
    return Outbreak(category, count, minutes, radius_m)
