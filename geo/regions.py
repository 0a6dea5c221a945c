"""Regions for scale-out: which region owns a point, and which other regions must also see it.

A *region* is an H3 cell at a coarse resolution. Reports are routed to the partition of their
region, so a region's reports meet in one detector. A point belongs to the region that is the
H3 parent of its surge cell (its H3 cell at the surge resolution, finer or equal), so every
surge cell lies wholly inside one region and a region's surge counts are exact.

Near a border the detector of one region needs reports of the next: a group of agreeing
reports can straddle the border, and the background a group is judged against extends around
it. So a point within `halo_m` of another region (measured to the surge cells that make up that
region, since those are what it is made of) is sent to that region too, as a *halo* report.

Everything is cached per surge cell: a cell far from every border (most of them) costs one
dict lookup; only a cell within `halo_m` of a foreign cell measures the point's distance to
the foreign cells near it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import h3
from h3.api import basic_int

from geoincident.geo.cells import disk_k_for_radius
from geoincident.geo.distance import EARTH_RADIUS_M

_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0

Ring = tuple[tuple[float, float], ...]  # a cell's boundary, (lat, lon) vertices


def region_of_point(lat: float, lon: float, cell_resolution: int, resolution: int) -> str:
    """The region owning a point: the parent at `resolution` of its cell at `cell_resolution`
    (not the cell at `resolution` containing it: H3 children stick out of their parent)."""
    cell = basic_int.latlng_to_cell(lat, lon, cell_resolution)
    return h3.int_to_str(basic_int.cell_to_parent(cell, resolution))


def region_of_cell(cell: str, resolution: int) -> str:
    """The region owning a cell at a finer (or the same) resolution."""
    return h3.cell_to_parent(cell, resolution)


def partition_of_region(region: str, partitions: int) -> int:
    """A region's partition: a stable hash of its H3 index (hex), so every process, every
    replay and every version agree on it."""
    digest = hashlib.blake2b(region.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


@dataclass(slots=True)
class _CellInfo:
    region: str
    # foreign cells (other regions) within halo_m of this cell: (their region, boundary)
    near: list[tuple[str, Ring]]


@dataclass(slots=True)
class RegionMap:
    """Routing of points to regions at `resolution`, built from cells at `cell_resolution`."""

    resolution: int
    cell_resolution: int
    halo_m: float
    partitions: int
    _cells: dict[int, _CellInfo] = field(default_factory=dict, repr=False)
    _partitions: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.resolution <= self.cell_resolution <= 15:
            raise ValueError(
                f"region resolution {self.resolution} must be between 0 and the surge "
                f"resolution {self.cell_resolution}"
            )
        if self.halo_m < 0:
            raise ValueError("halo_m must be >= 0")
        if self.partitions < 1:
            raise ValueError("partitions must be >= 1")

    # ------------------------------------------------------------------ queries

    def region_of(self, lat: float, lon: float) -> str:
        """The region (H3 hex string) that owns a point."""
        return self._info(basic_int.latlng_to_cell(lat, lon, self.cell_resolution)).region

    def partition_of(self, region: str) -> int:
        found = self._partitions.get(region)
        if found is None:
            found = self._partitions[region] = partition_of_region(region, self.partitions)
        return found

    def route(self, lat: float, lon: float) -> tuple[str, list[str]]:
        """(the owning region, the other regions within halo_m of the point)."""
        info = self._info(basic_int.latlng_to_cell(lat, lon, self.cell_resolution))
        if not info.near:
            return info.region, []
        halo: list[str] = []
        limit = self.halo_m
        for region, ring in info.near:
            if region not in halo and _distance_to_ring_m(lat, lon, ring) <= limit:
                halo.append(region)
        return info.region, halo

    def targets(self, lat: float, lon: float) -> tuple[int, list[int]]:
        """(the owner's partition, the other partitions that get the point as halo)."""
        region, halo = self.route(lat, lon)
        owner = self.partition_of(region)
        others: list[int] = []
        for other in halo:
            partition = self.partition_of(other)
            if partition != owner and partition not in others:
                others.append(partition)
        return owner, others

    # ------------------------------------------------------------------ the cache

    def _info(self, cell: int) -> _CellInfo:
        info = self._cells.get(cell)
        if info is None:
            info = self._cells[cell] = self._describe(cell)
        return info

    def _describe(self, cell: int) -> _CellInfo:
        region = h3.int_to_str(basic_int.cell_to_parent(cell, self.resolution))
        near: list[tuple[str, Ring]] = []
        if self.halo_m > 0:
            own = _ring(cell)
            # every point within halo_m of any point of the cell: a disk around the cell's
            # farthest vertex from its centre is within halo_m + the cell's radius
            k = disk_k_for_radius(self.halo_m, self.cell_resolution) + 1
            for other in basic_int.grid_disk(cell, k):
                other_region = h3.int_to_str(basic_int.cell_to_parent(other, self.resolution))
                if other_region == region:
                    continue
                ring = _ring(other)
                if _ring_distance_m(own, ring) <= self.halo_m:
                    near.append((other_region, ring))
        return _CellInfo(region, near)


def _ring(cell: int) -> Ring:
    return tuple(basic_int.cell_to_boundary(cell))


def _distance_to_ring_m(lat: float, lon: float, ring: Ring) -> float:
    """Metres from a point to a cell's boundary (the point lies outside the cell: it is in
    another one). Local equirectangular projection around the point: exact enough over the few
    kilometres a halo spans."""
    kx = _M_PER_DEG * math.cos(math.radians(lat))
    ky = _M_PER_DEG
    best = math.inf
    n = len(ring)
    for i in range(n):
        alat, alon = ring[i]
        blat, blon = ring[(i + 1) % n]
        # longitudes as offsets from the point's, across the antimeridian too
        ax, ay = _wrap(alon - lon) * kx, (alat - lat) * ky
        bx, by = _wrap(blon - lon) * kx, (blat - lat) * ky
        d = _point_segment(0.0, 0.0, ax, ay, bx, by)
        if d < best:
            best = d
    return best


def _ring_distance_m(a: Ring, b: Ring) -> float:
    """The least distance between two cells' boundaries (0 when they touch)."""
    best = math.inf
    for lat, lon in a:
        best = min(best, _distance_to_ring_m(lat, lon, b))
    for lat, lon in b:
        best = min(best, _distance_to_ring_m(lat, lon, a))
    return best


def _wrap(dlon: float) -> float:
    """A longitude difference in [-180, 180)."""
    return (dlon + 180.0) % 360.0 - 180.0


def _point_segment(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> float:
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    if length2 == 0.0:
        return math.hypot(px - ax, py - ay)
    t = ((px - ax) * dx + (py - ay) * dy) / length2
    t = 0.0 if t < 0.0 else 1.0 if t > 1.0 else t
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


__all__ = ["RegionMap", "partition_of_region", "region_of_cell", "region_of_point"]
