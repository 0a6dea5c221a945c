"""A lat/lon grid of boxes at least a given distance wide everywhere on the sphere.

Finding every point within a radius of another needs only the 3 x 3 boxes around it when the
boxes are at least the radius wide. Rows have an equal latitude span; each row is cut into as
many equal longitude columns as keep a column that wide at the most poleward latitude of the
row and its two neighbours, so the guarantee holds across rows of different column counts,
across the antimeridian (columns wrap) and near the poles (a row there is a single box).
"""

from __future__ import annotations

import math
from typing import Any

from geoincident.geo.distance import EARTH_RADIUS_M

_SLACK = 1.001  # over the exact bounds, against rounding at the edges
_ROW_SPAN = 1 << 24  # more than any row's column count: box = row * _ROW_SPAN + column


class DistanceGrid:
    """Boxes at least `width_m` wide on the sphere of `haversine_m`, named by one int each.

    Two points within `width_m` of each other differ by at most width/R radians of latitude,
    so they are in the same or adjacent rows; and at most asin(sin(width/R) / cos(lat)) of
    longitude at the most poleward latitude either can have, so within a row sized for the rows
    around it they are at most one column apart (modulo the row's column count).
    """

    __slots__ = ("lat_step", "_angle", "_columns")

    def __init__(self, width_m: float) -> None:
        if not width_m > 0:
            raise ValueError(f"a grid needs a width > 0, not {width_m!r}")
        self._angle = _SLACK * width_m / EARTH_RADIUS_M  # radians of arc
        self.lat_step = math.degrees(self._angle)
        self._columns: dict[int, tuple[float, int]] = {}

    def columns(self, row: int) -> tuple[float, int]:
        """(column width in degrees, number of columns) of a row."""
        found = self._columns.get(row)
        if found is None:
            step = self.lat_step
            # the most poleward latitude of this row and its two neighbours
            edge = min(90.0, max(abs((row - 1) * step), abs((row + 2) * step)))
            cos = math.cos(math.radians(edge))
            reach = math.sin(self._angle) / cos if cos > 0 else 2.0
            count = 1
            if reach < 1.0:
                count = max(1, int(360.0 / (_SLACK * math.degrees(math.asin(reach)))))
            found = self._columns[row] = (360.0 / count, count)
        return found

    def box(self, lat: float, lon: float) -> int:
        row = math.floor(lat / self.lat_step)
        width, count = self._columns.get(row) or self.columns(row)
        return row * _ROW_SPAN + math.floor((lon + 180.0) / width) % count

    def neighbourhood(self, lat: float, lon: float) -> list[int]:
        """The boxes that can hold a point within the width of (lat, lon): 3 x 3 at most."""
        row = math.floor(lat / self.lat_step)
        columns = self._columns
        shifted = lon + 180.0
        boxes = []
        for r in (row - 1, row, row + 1):
            width, count = columns.get(r) or self.columns(r)
            col = math.floor(shifted / width) % count
            base = r * _ROW_SPAN
            if count >= 3:
                boxes.append(base + (col - 1 if col else count - 1))
                boxes.append(base + col)
                boxes.append(base + (col + 1 if col + 1 < count else 0))
            else:
                boxes.extend(base + c for c in range(count))
        return boxes

    def block(self, lat: float, lon: float, k: int) -> list[int]:
        """The boxes within k rows and k columns of the point's box, (2k + 1)² at most: every
        point within k widths of (lat, lon) is in them (rows of different column counts are
        only roughly aligned, so the block is a neighbourhood, not an exact square)."""
        row = math.floor(lat / self.lat_step)
        shifted = lon + 180.0
        boxes = set()
        for r in range(row - k, row + k + 1):
            width, count = self._columns.get(r) or self.columns(r)
            col = math.floor(shifted / width) % count
            base = r * _ROW_SPAN
            for c in range(col - k, col + k + 1):
                boxes.add(base + c % count)
        return sorted(boxes)

    def gather(self, boxes: dict[int, Any], lat: float, lon: float) -> list:
        """The entries of `boxes` in the neighbourhood of (lat, lon), concatenated: the same as
        probing `neighbourhood`, without building it (the hot path of every report). A box
        holds a non-empty list of items, or (where most boxes hold one, as the free reports'
        do) a single item that is not a list."""
        row = math.floor(lat / self.lat_step)
        columns = self._columns
        shifted = lon + 180.0
        found: list = []
        get = boxes.get
        for r in (row - 1, row, row + 1):
            width, count = columns.get(r) or self.columns(r)
            col = math.floor(shifted / width) % count
            base = r * _ROW_SPAN
            if count >= 3:
                bucket = get(base + col)
                if bucket is not None:
                    _collect(found, bucket)
                bucket = get(base + (col - 1 if col else count - 1))
                if bucket is not None:
                    _collect(found, bucket)
                bucket = get(base + (col + 1 if col + 1 < count else 0))
                if bucket is not None:
                    _collect(found, bucket)
            else:
                for c in range(count):
                    bucket = get(base + c)
                    if bucket is not None:
                        _collect(found, bucket)
        return found


def _collect(found: list, bucket: Any) -> None:
    if type(bucket) is list:
        found += bucket
    else:
        found.append(bucket)
