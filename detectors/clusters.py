"""Spatial clusters of same-category reports, and the H3 index that finds them.

A cluster is the set of reports, within one category's time window, that lie within
`radius_m` of the cluster's centre. Clusters are indexed by the H3 cell of their centre at a
resolution where a k = 1 disk covers the radius (geo.index_resolution_for_radius), so finding
the clusters near a report is a 7-cell lookup plus exact haversine distances: cell edges never
split a cluster.
"""

from __future__ import annotations

import bisect
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
        "incident",
    )

    def __init__(self, founder: Report, weight: float) -> None:
        self.category = founder.category
        self.founder_ts_ms = founder.ts_ms
        self.founder_id = founder.id
        self.members: list[Report] = [founder]
        self.weights: dict[str, float] = {founder.id: weight}
        self.independence = Independence()
        self.independence.add(founder.reporter, founder.device, weight)
        self.lat = founder.lat
        self.lon = founder.lon
        self.index_cell = ""
        self.incident: Incident | None = None

    @property
    def seniority(self) -> tuple[int, str]:
        """Older clusters win merges; ties broken by the founding report's id."""
        return (self.founder_ts_ms, self.founder_id)

    def add(self, report: Report, weight: float) -> None:
        members = self.members
        if not members or members[-1].ts_ms <= report.ts_ms:
            members.append(report)
        else:  # a late report: keep members in event-time order
            bisect.insort(members, report, key=_member_key)
        self.weights[report.id] = weight
        self.independence.add(report.reporter, report.device, weight)

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


class ClusterIndex:
    """Clusters by (category, H3 cell of their centre); looks up a k = 1 disk around a point."""

    __slots__ = ("resolution", "_cells", "_disks", "size")

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self._cells: dict[tuple[str, str], list[Cluster]] = {}
        self._disks: dict[str, list[str]] = {}
        self.size = 0

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

    def insert(self, cluster: Cluster) -> None:
        cell = self.cell(cluster.lat, cluster.lon)
        cluster.index_cell = cell
        self._cells.setdefault((cluster.category, cell), []).append(cluster)
        self.size += 1

    def remove(self, cluster: Cluster) -> None:
        key = (cluster.category, cluster.index_cell)
        bucket = self._cells.get(key)
        if bucket is None or cluster not in bucket:
            return
        bucket.remove(cluster)
        if not bucket:
            del self._cells[key]
        cluster.index_cell = ""
        self.size -= 1

    def moved(self, cluster: Cluster) -> None:
        """Re-file a cluster whose centre may have crossed into another cell."""
        if not cluster.index_cell:
            return
        cell = self.cell(cluster.lat, cluster.lon)
        if cell != cluster.index_cell:
            self.remove(cluster)
            self.insert(cluster)

    def near(
        self, category: str, lat: float, lon: float, radius_m: float, cell: str | None = None
    ) -> list[tuple[float, Cluster]]:
        """Clusters of a category whose centre lies within radius_m of the point, with distances."""
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
