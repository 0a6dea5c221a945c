"""A validated report as the detector holds it in its windows (report.py makes them).

A native class of the compiled core: its event time is a machine integer and its position
machine doubles inside the object, and so is its accuracy (a negative number standing for
none), where a msgspec Struct (or any plain Python object) points to an int and three floats
of their own: a report held costs some 80 bytes less. Reading its fields from the compiled
modules is a load from the object, not an attribute lookup. Its source, language and halo
flag, from small vocabularies, are one `Origin` that reports share: 112 bytes an object, not
128 (two pointers and a flag fewer).
"""

from __future__ import annotations

# Stored for an accuracy the report did not give (a given one is never negative).
NO_ACCURACY = -1.0
# The origins reports share, by (source, language, halo); bounded, so junk values cannot grow
# it (a report past the bound holds an origin of its own).
_ORIGINS: dict[tuple[str | None, str | None, bool], Origin] = {}
_MAX_ORIGINS = 10_000


class Origin:
    """Where a report comes from: its source, language and whether it is a halo copy; reports
    of the same share one."""

    __slots__ = ("source", "lang", "halo")

    def __init__(self, source: str | None, lang: str | None, halo: bool) -> None:
        self.source = source
        self.lang = lang
        self.halo = halo


# The fields, in the order the constructor takes them.
FIELDS = (
    "id",
    "ts_ms",
    "lat",
    "lon",
    "reporter",
    "category",
    "source",
    "device",
    "accuracy_m",
    "lang",
    "halo",
)


class Report:
    """A validated report, as the detector keeps it: only what decisions need.

    Reports order by (event time, id), the order the detector processes them in; the detector
    holds one report of an id at a time, so no two reports it orders are equal."""

    __slots__ = (
        "id",
        "ts_ms",
        "lat",
        "lon",
        "reporter",
        "category",
        "device",
        "_accuracy_m",
        "_origin",
    )

    def __init__(
        self,
        id: str,
        ts_ms: int,
        lat: float,
        lon: float,
        reporter: str,
        category: str,
        source: str | None = None,
        device: str | None = None,
        accuracy_m: float | None = None,
        lang: str | None = None,
        halo: bool = False,
    ) -> None:
        self.id = id
        self.ts_ms = ts_ms
        self.lat = lat
        self.lon = lon
        self.reporter = reporter
        self.category = category
        self.device = device
        self._accuracy_m = NO_ACCURACY if accuracy_m is None else accuracy_m
        self._origin = _origin(source, lang, halo)

    @property
    def source(self) -> str | None:
        return self._origin.source

    @property
    def lang(self) -> str | None:
        return self._origin.lang

    @property
    def halo(self) -> bool:
        """Scale-out: a copy of a report owned by a neighbouring region, sent here because it
        lies within the halo of this region's border. It counts for local detection (groups
        across the border, the background) but not for this detector's surges, and is not
        counted as this detector's input (its owner counts it)."""
        return self._origin.halo

    @halo.setter
    def halo(self, halo: bool) -> None:
        origin = self._origin
        self._origin = _origin(origin.source, origin.lang, halo)

    @property
    def accuracy_m(self) -> float | None:
        """The GPS accuracy the report gave, in metres (None if it gave none)."""
        accuracy_m = self._accuracy_m
        return None if accuracy_m < 0.0 else accuracy_m

    def __lt__(self, other: Report) -> bool:
        return self.ts_ms < other.ts_ms or (self.ts_ms == other.ts_ms and self.id < other.id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Report):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in FIELDS)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)
        return f"Report({fields})"


def _origin(source: str | None, lang: str | None, halo: bool) -> Origin:
    found = _ORIGINS.get((source, lang, halo))
    if found is None:
        found = Origin(source, lang, halo)
        if len(_ORIGINS) < _MAX_ORIGINS:
            _ORIGINS[(source, lang, halo)] = found
    return found
