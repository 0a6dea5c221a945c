"""A validated report as the detector holds it in its windows (report.py makes them).

A native class of the compiled core: its event time is a machine integer and its position
machine doubles inside the object, where a msgspec Struct (or any plain Python object) points
to an int and two floats of their own, so a report held costs some 60 bytes less. Reading its
fields from the compiled modules is a load from the object, not an attribute lookup.
"""

from __future__ import annotations

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

    __slots__ = FIELDS

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
        self.source = source
        self.device = device
        self.accuracy_m = accuracy_m
        self.lang = lang
        # Scale-out: a copy of a report owned by a neighbouring region, sent here because it
        # lies within the halo of this region's border. It counts for local detection (groups
        # across the border, the background) but not for this detector's surges, and is not
        # counted as this detector's input (its owner counts it).
        self.halo = halo

    def __lt__(self, other: Report) -> bool:
        return self.ts_ms < other.ts_ms or (self.ts_ms == other.ts_ms and self.id < other.id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Report):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in FIELDS)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)
        return f"Report({fields})"
