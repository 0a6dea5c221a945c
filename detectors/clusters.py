"""Spatial clusters of same-category reports, and the H3 index that finds them.

A cluster is the set of reports, within one category's time window, that lie within
`radius_m` of the cluster's centre. Clusters are indexed by the H3 cell of their centre at a
resolution where a k = 1 disk covers the radius (geo.index_resolution_for_radius), so finding
the clusters near a report is a 7-cell lookup plus exact haversine distances: cell edges never
split a cluster.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

import h3

from geoincident.detectors.independence import Independence
from geoincident.detectors.report import Report
from geoincident.geo.distance import WeightedCentroid, haversine_m

if TYPE_CHECKING:
    from geoincident.detectors.lifecycle import Incident


class Cluster:
    """Reports of one category near one place, inside the sliding window."""

    __slots__ = (
        "category",
        "founder_ts_ms",
        "founder_id",
        "members",
        "weights",
        "independence",
        "lat",
        "lon",
        "index_cell",
        "box",
        "incident",
    )

    def __init__(self, founder: Report, weight: float) -> None:
        self.category = founder.category
        self.founder_ts_ms = founder.ts_ms
        self.founder_id = founder.id
        self.members: list[Report] = [founder]
        self.weights: dict[str, float] = {founder.id: weight}
        # Most clusters never get a second member: the union-find is built when one arrives.
        self.independence: Independence | None = None
        self.lat = founder.lat
        self.lon = founder.lon
        self.index_cell = ""
        self.box: tuple[str, int, int] | None = None
        self.incident: Incident | None = None

    @classmethod
    def for_incident(cls, incident: Incident) -> Cluster:
        """An empty window around a restored incident: new reports nearby join it."""
        cluster = cls.__new__(cls)
        cluster.category = incident.category
        cluster.founder_ts_ms, cluster.founder_id = incident.seniority
        cluster.members = []
        cluster.weights = {}
        cluster.independence = None
        cluster.lat, cluster.lon = incident.centre()
        cluster.index_cell = ""
        cluster.box = None
        cluster.incident = incident
        return cluster

    @property
    def score(self) -> float:
        if self.independence is None:
            return self.weights[self.founder_id] if self.members else 0.0
        return self.independence.score

    def _independence(self) -> Independence:
        independence = self.independence
        if independence is None:
            independence = self.independence = Independence()
            weights = self.weights
            for member in self.members:
                independence.add(member.reporter, member.device, weights[member.id])
        return independence

    @property
    def seniority(self) -> tuple[int, str]:
        """Older clusters win merges; ties broken by the founding report's id."""
        return (self.founder_ts_ms, self.founder_id)

    def add(self, report: Report, weight: float) -> None:
        independence = self._independence()
        members = self.members
        if not members or members[-1].ts_ms <= report.ts_ms:
            members.append(report)
        else:  # a late report: keep members in event-time order
            bisect.insort(members, report, key=_member_key)
        self.weights[report.id] = weight
        independence.add(report.reporter, report.device, weight)

    def remove(self, report: Report) -> None:
        members = self.members
        if members and members[0] is report:
            members.pop(0)
        else:
            members.remove(report)
        del self.weights[report.id]

    def rebuild(self, accuracy: AccuracyWeights) -> None:
        """Recompute the window's independence and centre after members left or moved."""
        independence = Independence()
        centroid = WeightedCentroid()
        weights = self.weights
        for member in self.members:
            independence.add(member.reporter, member.device, weights[member.id])
            centroid.add(member.lat, member.lon, accuracy(member.accuracy_m))
        self.independence = independence
        if centroid.weight > 0.0:
            self.lat, self.lon = centroid.latlon()

    def recentre(self, accuracy: AccuracyWeights) -> None:
        centroid = WeightedCentroid()
        for member in self.members:
            centroid.add(member.lat, member.lon, accuracy(member.accuracy_m))
        if centroid.weight > 0.0:
            self.lat, self.lon = centroid.latlon()

    def window_score(self, start_ms: int, end_ms: int) -> float:
        independence = Independence()
        weights = self.weights
        for member in self.members:
            if start_ms <= member.ts_ms <= end_ms:
                independence.add(member.reporter, member.device, weights[member.id])
        return independence.score


def _member_key(report: Report) -> tuple[int, str]:
    return (report.ts_ms, report.id)


class AccuracyWeights:
    """Inverse-variance weight of a position by its GPS accuracy, memoised on the value."""

    __slots__ = ("_default", "_floor", "_cache")

    def __init__(self, default_accuracy_m: float, floor_m: float) -> None:
        self._default = 1.0 / (default_accuracy_m * default_accuracy_m)
        self._floor = floor_m
        self._cache: dict[float, float] = {}

    def __call__(self, accuracy_m: float | None) -> float:
        if accuracy_m is None:
            return self._default
        weight = self._cache.get(accuracy_m)
        if weight is None:
            acc = accuracy_m if accuracy_m > self._floor else self._floor
            weight = 1.0 / (acc * acc)
            if len(self._cache) < 10_000:
                self._cache[accuracy_m] = weight
        return weight


# Above this latitude a degree of longitude is too short for the occupancy boxes to stay
# exact; there every lookup takes the H3 path.
_BOX_MAX_LAT = 70.0
_METRES_PER_DEGREE_LAT = 111_000.0  # the shortest a degree of latitude gets (at the equator)


class ClusterIndex:
    """Clusters by (category, H3 cell of their centre); looks up a k = 1 disk around a point.

    In front of the H3 lookup sits an occupancy count per (category, lat/lon box) with boxes
    at least `max_radius_m` wide: when none of the 3x3 boxes around a report holds a cluster,
    no cluster can be within the radius and the (costly) grid_disk is skipped. Sparse input (a
    national deployment, the quiet hours of a city) then costs a few dict lookups per report.
    """

    __slots__ = ("resolution", "_cells", "_disks", "size", "_boxes", "_lat_step", "_lon_step")

    def __init__(self, resolution: int, max_radius_m: float = 250.0) -> None:
        self.resolution = resolution
        self._cells: dict[tuple[str, str], list[Cluster]] = {}
        self._disks: dict[str, list[str]] = {}
        self._boxes: dict[tuple[str, int, int], int] = {}
        # 1 % slack over the flat-earth bound covers the sphere's deviation at these sizes.
        self._lat_step = 1.01 * max_radius_m / _METRES_PER_DEGREE_LAT
        self._lon_step = self._lat_step / math.cos(math.radians(_BOX_MAX_LAT))
        self.size = 0

    def _box(self, category: str, lat: float, lon: float) -> tuple[str, int, int]:
        return (category, math.floor(lat / self._lat_step), math.floor(lon / self._lon_step))

    def _maybe_near(self, category: str, lat: float, lon: float) -> bool:
        if lat > _BOX_MAX_LAT or lat < -_BOX_MAX_LAT or lon > 179.0 or lon < -179.0:
            return True
        boxes = self._boxes
        if not boxes:
            return False
        row = math.floor(lat / self._lat_step)
        col = math.floor(lon / self._lon_step)
        return (
            (category, row, col) in boxes
            or (category, row, col - 1) in boxes
            or (category, row, col + 1) in boxes
            or (category, row - 1, col) in boxes
            or (category, row - 1, col - 1) in boxes
            or (category, row - 1, col + 1) in boxes
            or (category, row + 1, col) in boxes
            or (category, row + 1, col - 1) in boxes
            or (category, row + 1, col + 1) in boxes
        )

    def cell(self, lat: float, lon: float) -> str:
        return h3.latlng_to_cell(lat, lon, self.resolution)

    def _disk(self, cell: str) -> list[str]:
        disk = self._disks.get(cell)
        if disk is None:
            if len(self._disks) >= 200_000:  # bounded memo: a city touches a few hundred cells
                self._disks.clear()
            disk = h3.grid_disk(cell, 1)
            self._disks[cell] = disk
        return disk

    def insert(self, cluster: Cluster, cell: str | None = None) -> None:
        if cell is None:
            cell = self.cell(cluster.lat, cluster.lon)
        cluster.index_cell = cell
        self._cells.setdefault((cluster.category, cell), []).append(cluster)
        box = self._box(cluster.category, cluster.lat, cluster.lon)
        cluster.box = box
        self._boxes[box] = self._boxes.get(box, 0) + 1
        self.size += 1

    def remove(self, cluster: Cluster) -> None:
        key = (cluster.category, cluster.index_cell)
        bucket = self._cells.get(key)
        if bucket is None:
            return
        try:
            bucket.remove(cluster)
        except ValueError:
            return
        if not bucket:
            del self._cells[key]
        box = cluster.box
        left = self._boxes[box] - 1
        if left:
            self._boxes[box] = left
        else:
            del self._boxes[box]
        cluster.index_cell = ""
        self.size -= 1

    def moved(self, cluster: Cluster) -> None:
        """Re-file a cluster whose centre may have crossed into another cell."""
        if not cluster.index_cell:
            return
        cell = self.cell(cluster.lat, cluster.lon)
        if (
            cell != cluster.index_cell
            or self._box(cluster.category, cluster.lat, cluster.lon) != cluster.box
        ):
            self.remove(cluster)
            self.insert(cluster, cell)

    def near(
        self, category: str, lat: float, lon: float, radius_m: float, cell: str | None = None
    ) -> list[tuple[float, Cluster]]:
        """Clusters of a category whose centre lies within radius_m of the point, with distances."""
        if not self._maybe_near(category, lat, lon):
            return []
        if cell is None:
            cell = self.cell(lat, lon)
        found: list[tuple[float, Cluster]] = []
        cells = self._cells
        for neighbour in self._disk(cell):
            bucket = cells.get((category, neighbour))
            if bucket is None:
                continue
            for cluster in bucket:
                distance = haversine_m(lat, lon, cluster.lat, cluster.lon)
                if distance <= radius_m:
                    found.append((distance, cluster))
        return found

    def active_cells(self) -> int:
        return len(self._cells)
