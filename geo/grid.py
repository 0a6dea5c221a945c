"""A lat/lon grid of boxes at least a given distance wide everywhere on the sphere.

Finding every point within a radius of another needs only the 3 x 3 boxes around it when the
boxes are at least the radius wide. Rows have an equal latitude span; each row is cut into as
many equal longitude columns as keep a column that wide at the most poleward latitude of the
row and its two neighbours, so the guarantee holds across rows of different column counts,
across the antimeridian (columns wrap) and near the poles (a row there is a single box).
"""

from __future__ import annotations

import math
from typing import Any, Final

from librt.vecs import vec
from mypy_extensions import i64

from geoincident.geo.distance import EARTH_RADIUS_M

_SLACK = 1.001  # over the exact bounds, against rounding at the edges
# Rows whose columns a grid keeps worked out: a row is kept in the slot of its number modulo
# this, so no two of any 16,384 consecutive rows (37 degrees of latitude on a grid 250 m wide)
# take the same slot; a row whose slot another row took is worked out again.
_KEPT_ROWS: Final = 1 << 14
_NO_ROW: Final = -(1 << 62)  # in a slot no row has taken yet
_ROW_SPAN: Final = 1 << 24  # more than any row's column count: box = row * _ROW_SPAN + column
_ROW_SHIFT: Final = 24
_COLUMN_MASK: Final = (1 << 24) - 1


class DistanceGrid:
    """Boxes at least `width_m` wide on the sphere of `haversine_m`, named by one int each.

    Two points within `width_m` of each other differ by at most width/R radians of latitude,
    so they are in the same or adjacent rows; and at most asin(sin(width/R) / cos(lat)) of
    longitude at the most poleward latitude either can have, so within a row sized for the rows
    around it they are at most one column apart (modulo the row's column count).
    """

    __slots__ = ("lat_step", "_angle", "_rows", "_widths", "_counts")

    def __init__(self, width_m: float) -> None:
        if not width_m > 0:
            raise ValueError(f"a grid needs a width > 0, not {width_m!r}")
        self._angle = _SLACK * width_m / EARTH_RADIUS_M  # radians of arc
        self.lat_step = math.degrees(self._angle)
        # The rows worked out, kept by row number modulo _KEPT_ROWS (a row and its column
        # width and count, in machine numbers: a lookup makes no object)
        self._rows = vec[i64]([_NO_ROW] * _KEPT_ROWS)
        self._widths = vec[float]([0.0] * _KEPT_ROWS)
        self._counts = vec[i64]([0] * _KEPT_ROWS)

    def columns(self, row: int) -> tuple[float, int]:
        """(column width in degrees, number of columns) of a row."""
        kept = row & (_KEPT_ROWS - 1)
        if self._rows[kept] != row:
            step = self.lat_step
            # the most poleward latitude of this row and its two neighbours
            edge = min(90.0, max(abs((row - 1) * step), abs((row + 2) * step)))
            cos = math.cos(math.radians(edge))
            reach = math.sin(self._angle) / cos if cos > 0 else 2.0
            count = 1
            if reach < 1.0:
                count = max(1, int(360.0 / (_SLACK * math.degrees(math.asin(reach)))))
            self._rows[kept] = row
            self._widths[kept] = 360.0 / count
            self._counts[kept] = count
        return self._widths[kept], self._counts[kept]

    def box(self, lat: float, lon: float) -> int:
        row = math.floor(lat / self.lat_step)
        width, count = self.columns(row)
        return row * _ROW_SPAN + math.floor((lon + 180.0) / width) % count

    def neighbourhood(self, lat: float, lon: float) -> list[int]:
        """The boxes that can hold a point within the width of (lat, lon): 3 x 3 at most."""
        row = math.floor(lat / self.lat_step)
        shifted = lon + 180.0
        boxes = []
        for r in (row - 1, row, row + 1):
            width, count = self.columns(r)
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
            width, count = self.columns(r)
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
        shifted = lon + 180.0
        found: list = []
        for r in (row - 1, row, row + 1):
            width, count = self.columns(r)
            col = math.floor(shifted / width) % count
            base = r * _ROW_SPAN
            if count >= 3:
                bucket = boxes.get(base + col)
                if bucket is not None:
                    _collect(found, bucket)
                bucket = boxes.get(base + (col - 1 if col else count - 1))
                if bucket is not None:
                    _collect(found, bucket)
                bucket = boxes.get(base + (col + 1 if col + 1 < count else 0))
                if bucket is not None:
                    _collect(found, bucket)
            else:
                for c in range(count):
                    bucket = boxes.get(base + c)
                    if bucket is not None:
                        _collect(found, bucket)
        return found

    def gather_table(self, table: BoxTable, lat: float, lon: float) -> list:
        """`gather` over a `BoxTable`: the same entries in the same order as `gather` finds in
        a dict holding what the table holds."""
        row = math.floor(lat / self.lat_step)
        shifted = lon + 180.0
        found: list = []
        keys = table._keys
        values = table._values
        mask = table._mask
        for r in (row - 1, row, row + 1):
            width, count = self.columns(r)
            col = math.floor(shifted / width) % count
            base = r * _ROW_SPAN
            if count >= 3:
                _probe(found, keys, values, mask, base + col)
                _probe(found, keys, values, mask, base + (col - 1 if col else count - 1))
                _probe(found, keys, values, mask, base + (col + 1 if col + 1 < count else 0))
            else:
                for c in range(count):
                    _probe(found, keys, values, mask, base + c)
        return found


def _probe(found: list, keys: vec[i64], values: list[Any], mask: int, box: int) -> None:
    """Collect what a table (its keys, values and mask) holds in a box into `found`."""
    slot = _home(box, mask)
    while True:
        # None where the slot is empty (compared only: the object there is not touched)
        if values[slot] is None:
            return
        if keys[slot] == box + box + 1:
            _collect(found, values[slot])
            return
        slot = (slot + 1) & mask


def _collect(found: list, bucket: Any) -> None:
    if type(bucket) is list:
        found += bucket
    else:
        found.append(bucket)


# Odd multipliers spreading a box's row and column over the slots of a `BoxCounts` (the low
# bits of their sum: boxes next to each other, in a row or a column, land apart). Under 2**30,
# as the row bits taken are, so the compiled code multiplies machine integers.
_MIX_ROW: Final = 0x27D4EB2F
_MIX_COLUMN: Final = 0x165667B1
_ROW_BITS: Final = (1 << 26) - 1
_LEAST_SLOTS: Final = 8
# A slot holds box << count bits | count, in a machine integer below this in magnitude (a small
# int of the compiled code too, which needs no object of its own).
_SLOT_BITS: Final = 61


class BoxCounts:
    """How many of something each box of a grid holds (`get` says 0 for boxes holding none): a
    vector of machine integers (`vec[i64]`), each the box and its count in one, found by
    linear probing and kept between a quarter and half full. A box costs 16 to 32 bytes, where
    a dict[int, int] costs it an int object of 32 bytes, an entry of 24 and its share of the
    index. Removing shifts back the entries after the emptied slot that probed past it, so no
    slot is ever left marked deleted. A count too large for its bits (millions in one box, on
    grids of ordinary widths) keeps the rest in a dict."""

    __slots__ = ("_slots", "_mask", "_shift", "_full", "_over", "size")

    def __init__(self, grid: DistanceGrid) -> None:
        # the bits of a box of the grid: rows above and below the poles' by one, at most
        rows = math.floor(90.0 / grid.lat_step) + 2
        count_bits = _SLOT_BITS - _ROW_SHIFT - rows.bit_length() - 1
        if count_bits < 1:
            raise ValueError(f"a grid {grid.lat_step!r} degrees high is too fine to count in")
        self._slots = _zeros(_LEAST_SLOTS)  # 0: an empty slot
        self._mask = _LEAST_SLOTS - 1
        self._shift = count_bits
        # a count field this high holds the most it can; what is over it is in _over
        self._full = (1 << count_bits) - 1
        self._over: dict[int, int] = {}
        self.size = 0  # boxes held

    def __len__(self) -> int:
        return self.size

    def _find(self, box: int) -> int:
        """The slot holding the box, or the empty slot where its probe ends."""
        slots = self._slots
        mask = self._mask
        shift = self._shift
        slot = _home(box, mask)
        while True:
            held = slots[slot]
            if not held or held >> shift == box:
                return slot
            slot = (slot + 1) & mask

    def get(self, box: int) -> int:
        held = self._slots[self._find(box)]
        if not held:
            return 0
        count = held & self._full
        return count if count < self._full else count + self._over.get(box, 0)

    def add(self, box: int) -> None:
        """One more in the box."""
        slots = self._slots
        slot = self._find(box)
        held = slots[slot]
        if held:
            if held & self._full == self._full:
                self._over[box] = self._over.get(box, 0) + 1
            else:
                slots[slot] = held + 1
            return
        slots[slot] = (box << self._shift) | 1
        self.size += 1
        if 2 * self.size > self._mask + 1:
            self._resize(2 * (self._mask + 1))

    def remove(self, box: int) -> None:
        """One fewer in the box (KeyError if it holds none)."""
        slots = self._slots
        mask = self._mask
        shift = self._shift
        slot = self._find(box)
        held = slots[slot]
        if not held:
            raise KeyError(box)
        if held & self._full == self._full:
            over = self._over.get(box, 0)
            if over:
                if over > 1:
                    self._over[box] = over - 1
                else:
                    del self._over[box]
                return
        if held & self._full > 1:
            slots[slot] = held - 1
            return
        hole = slot
        while True:
            slot = (slot + 1) & mask
            held = slots[slot]
            if not held:
                break
            # an entry whose home slot is not within (hole, slot] may move into the hole
            if (slot - _home(held >> shift, mask)) & mask >= (slot - hole) & mask:
                slots[hole] = held
                hole = slot
        slots[hole] = 0
        self.size -= 1
        if mask + 1 > _LEAST_SLOTS and 8 * self.size < mask + 1:
            self._resize((mask + 1) // 2)

    def _resize(self, size: int) -> None:
        old = self._slots
        slots = _zeros(size)
        mask = size - 1
        shift = self._shift
        for held in old:
            if held:
                slot = _home(held >> shift, mask)
                while slots[slot]:
                    slot = (slot + 1) & mask
                slots[slot] = held
        self._slots = slots
        self._mask = mask


class BoxTable:
    """One object (not None) for each box of a grid, as a dict[int, object] would hold them:
    the boxes in a vector of machine integers, each slot 2 * box + 1 (never 0, which marks an
    empty slot; boxes are 0 or negative too), and the objects in a list beside it, slot for
    slot, None in the empty ones. Linear probing, resized as `BoxCounts` is (doubled past half
    full, halved under an eighth), backward-shift removal. A box costs 16 bytes a slot, 32 to
    128 bytes (about 48 at a quarter full), where a dict costs it an int object of 32 bytes, an
    entry of 24 and its share of the index.

    The boxes are a vector of machine integers (librt's `vec[i64]`), which the compiled code
    reads and writes as C does an array, making no int object. Every probe, shift and resize
    looks at the list first (None: an empty slot), and at the keys only where the slot is
    taken. It computes 2 * box + 1 as box + box + 1: the compiled code multiplies machine
    integers only below 2**30, and adds them below 2**62."""

    __slots__ = ("_keys", "_values", "_mask", "size")

    def __init__(self) -> None:
        self._keys = _zeros(_LEAST_SLOTS)  # 0: an empty slot
        self._values: list[Any] = [None] * _LEAST_SLOTS  # None in every empty slot
        self._mask = _LEAST_SLOTS - 1
        self.size = 0  # boxes held

    def __len__(self) -> int:
        return self.size

    def _find(self, box: int) -> int:
        """The slot holding the box, or the empty slot where its probe ends."""
        keys = self._keys
        values = self._values
        mask = self._mask
        key = box + box + 1
        slot = _home(box, mask)
        while values[slot] is not None and keys[slot] != key:
            slot = (slot + 1) & mask
        return slot

    def get(self, box: int) -> Any:
        """The object of the box, or None."""
        return self._values[self._find(box)]

    def set(self, box: int, value: Any) -> None:
        if value is None:
            raise ValueError("a BoxTable holds no None")
        slot = self._find(box)
        if self._values[slot] is None:
            self._take(slot, box, value)
        else:
            self._values[slot] = value

    def __setitem__(self, box: int, value: Any) -> None:
        self.set(box, value)

    def add(self, box: int, item: Any) -> None:
        """One more item in a box holding items as `DistanceGrid.gather` finds them: the item
        itself where the box held none, a list of them where it held one or more (an item is
        neither None nor a list). One probe, where get and set take two."""
        slot = self._find(box)
        values = self._values
        held = values[slot]
        if held is None:
            self._take(slot, box, item)
        elif type(held) is list:
            held.append(item)
        else:
            values[slot] = [held, item]

    def remove(self, box: int, item: Any) -> None:
        """One item fewer in a box holding items as `add` leaves them (KeyError if the box
        holds none, ValueError if its list does not hold the item)."""
        slot = self._find(box)
        values = self._values
        held = values[slot]
        if held is None:
            raise KeyError(box)
        if type(held) is list:
            held.remove(item)
            if len(held) == 1:
                values[slot] = held[0]
        else:
            self._empty(slot)

    def items(self) -> list[tuple[int, Any]]:
        """(box, object) of every box held, in no particular order (a list: the table may
        change after)."""
        keys = self._keys
        values = self._values
        return [
            (keys[slot] >> 1, values[slot])
            for slot in range(len(values))
            if values[slot] is not None
        ]

    def pop(self, box: int) -> Any:
        """Remove the box and return its object (KeyError if it holds none)."""
        slot = self._find(box)
        value = self._values[slot]
        if value is None:
            raise KeyError(box)
        self._empty(slot)
        return value

    def __delitem__(self, box: int) -> None:
        self.pop(box)

    def _take(self, slot: int, box: int, value: Any) -> None:
        """Put a box in the empty slot where its probe ended."""
        self._values[slot] = value
        self._keys[slot] = box + box + 1
        self.size += 1
        if 2 * self.size > self._mask + 1:
            self._resize(2 * (self._mask + 1))

    def _empty(self, slot: int) -> None:
        """Remove the box of a slot: entries after it that probed past it shift back."""
        keys = self._keys
        values = self._values
        mask = self._mask
        hole = slot
        while True:
            slot = (slot + 1) & mask
            if values[slot] is None:
                break
            held = keys[slot]
            # an entry whose home slot is not within (hole, slot] may move into the hole
            if (slot - _home(held >> 1, mask)) & mask >= (slot - hole) & mask:
                keys[hole] = held
                values[hole] = values[slot]
                hole = slot
        keys[hole] = 0
        values[hole] = None
        self.size -= 1
        if mask + 1 > _LEAST_SLOTS and 8 * self.size < mask + 1:
            self._resize((mask + 1) // 2)

    def _resize(self, size: int) -> None:
        old_keys = self._keys
        old_values = self._values
        keys = _zeros(size)
        values: list[Any] = [None] * size
        mask = size - 1
        for position in range(len(old_values)):
            if old_values[position] is not None:
                held = old_keys[position]
                slot = _home(held >> 1, mask)
                while values[slot] is not None:
                    slot = (slot + 1) & mask
                keys[slot] = held
                values[slot] = old_values[position]
        self._keys = keys
        self._values = values
        self._mask = mask


def _zeros(size: int) -> vec[i64]:
    """`size` machine integers, all 0."""
    return vec[i64]([0] * size)


def _home(box: int, mask: int) -> int:
    """The slot a box's probe starts at."""
    row = (box >> _ROW_SHIFT) & _ROW_BITS
    return (row * _MIX_ROW + (box & _COLUMN_MASK) * _MIX_COLUMN) & mask
