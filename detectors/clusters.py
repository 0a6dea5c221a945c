"""Where reports wait while they may still agree, and the windows of open incidents.

Two indexes, both on a grid of boxes at least the cluster radius wide (geo.grid.DistanceGrid),
so everything within the radius of a point is in the 3 x 3 boxes around it: at most nine
dictionary probes plus exact haversine distances, and box edges never split anything.

- `FreeReports`: processed reports, inside their category's window, that belong to no
  incident. An incident is born from them (grouping: `Grouping._try_open`), never from a long-lived
  "forming cluster": a cluster whose centre follows its members walks across a busy area,
  merging as it goes, until it carries thousands of reports; reports found around the point
  where agreement is tested cannot.
- `ClusterIndex`: the open incidents by the box of their centre, each with its `Cluster`, the
  members still inside the window (used to place a late report's validation time and to
  un-count a flagged report).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from geoincident.detectors.independence import Independence
from geoincident.detectors.report import Report
from geoincident.geo.distance import haversine_m
from geoincident.geo.grid import BoxTable, DistanceGrid

if TYPE_CHECKING:
    from geoincident.detectors.lifecycle import Incident


class Cluster:
    """An open incident's place in the index and its members inside the sliding window."""

    __slots__ = (
        "category",
        "founder_ts_ms",
        "founder_id",
        "members",
        "weights",
        "lat",
        "lon",
        "indexed",
        "box",
        "incident",
    )

    def __init__(self, incident: Incident) -> None:
        self.category = incident.category
        self.founder_ts_ms, self.founder_id = incident.seniority
        self.members: list[Report] = []
        # Weights other than 1.0, by report id; None while there are none (the common case).
        self.weights: dict[str, float] | None = None
        self.lat, self.lon = incident.centre()
        self.indexed = False
        self.box = 0
        self.incident = incident

    @property
    def seniority(self) -> tuple[int, str]:
        """Older incidents win merges; ties broken by the founding report's id."""
        return (self.founder_ts_ms, self.founder_id)

    def weight_of(self, report_id: str) -> float:
        weights = self.weights
        return 1.0 if weights is None else weights.get(report_id, 1.0)

    def add(self, report: Report, weight: float) -> None:
        members = self.members
        if not members or members[-1].ts_ms <= report.ts_ms:
            members.append(report)
        else:  # a late report: keep members in event-time order
            bisect.insort(members, report, key=_member_key)
        if weight != 1.0:
            if self.weights is None:
                self.weights = {}
            self.weights[report.id] = weight

    def remove_id(self, report_id: str) -> None:
        """Forget a member; members leave the window in event-time order, so it is nearly
        always the first (no step costs time in proportion to the incident's size)."""
        members = self.members
        if members and members[0].id == report_id:
            del members[0]
        else:
            for position, member in enumerate(members):
                if member.id == report_id:
                    del members[position]
                    break
        if self.weights:
            self.weights.pop(report_id, None)


def _member_key(report: Report) -> tuple[int, str]:
    return (report.ts_ms, report.id)


def window_score(
    members: list[tuple[Report, float]], start_ms: int, end_ms: int
) -> tuple[float, int]:
    """(independent weight, groups) of the members with start <= ts <= end."""
    independence = Independence()
    for member, weight in members:
        if start_ms <= member.ts_ms <= end_ms:
            independence.add(member.reporter, member.device, weight)
    return independence.score, independence.groups


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


class FreeReports:
    """Processed reports in their window that belong to no incident, by category and box.

    A box holds few reports however busy the city (its area times the local rate times the
    window), so gathering around a point costs the same in a quiet suburb and downtown.
    """

    __slots__ = ("_boxes", "_grid", "_weights", "size")

    def __init__(self, max_radius_m: float = 250.0) -> None:
        # category -> box -> its free reports: the report itself where it is alone in its box
        # (most boxes, outside a busy city), a list of two or more
        self._boxes: dict[str, BoxTable] = {}
        self._grid = DistanceGrid(max_radius_m)
        # Weights other than 1.0 by report id (blocked reporters, weighted sources).
        self._weights: dict[str, float] = {}
        self.size = 0

    def add(self, report: Report, weight: float) -> None:
        boxes = self._boxes.get(report.category)
        if boxes is None:
            boxes = self._boxes[report.category] = BoxTable()
        boxes.add(self._grid.box(report.lat, report.lon), report)
        if weight != 1.0:
            self._weights[report.id] = weight
        self.size += 1

    def remove(self, report: Report) -> None:
        boxes = self._boxes[report.category]
        boxes.remove(self._grid.box(report.lat, report.lon), report)
        self._weights.pop(report.id, None)
        self.size -= 1

    def weight_of(self, report: Report) -> float:
        return self._weights.get(report.id, 1.0)

    def near(
        self, category: str, lat: float, lon: float, radius_m: float, start_ms: int, end_ms: int
    ) -> list[tuple[Report, float]]:
        """Free reports of a category within radius_m of the point with start <= ts <= end,
        with their weights, in (event time, id) order."""
        boxes = self._boxes.get(category)
        if boxes is None or not boxes.size:
            return []
        weights = self._weights
        found = []
        for report in self._grid.gather_table(boxes, lat, lon):
            ts_ms = report.ts_ms
            if start_ms <= ts_ms <= end_ms and haversine_m(lat, lon, report.lat, report.lon) <= (
                radius_m
            ):
                found.append((report, weights.get(report.id, 1.0) if weights else 1.0))
        found.sort(key=_entry_key)
        return found

    def active_cells(self) -> int:
        return sum(len(boxes) for boxes in self._boxes.values())


def _entry_key(entry: tuple[Report, float]) -> tuple[int, str]:
    return (entry[0].ts_ms, entry[0].id)


class ClusterIndex:
    """Open incidents' clusters by category and the grid box of their centre.

    Every cluster whose centre lies within the radius of a point is in the 3 x 3 boxes around
    the point's box, so a lookup is at most nine dict probes plus exact haversine distances, and
    grid edges never split a cluster. H3 names the cells of the incidents themselves.
    """

    __slots__ = ("_boxes", "_rows", "size")

    def __init__(self, max_radius_m: float = 250.0) -> None:
        # category -> box -> clusters whose centre is in it
        self._boxes: dict[str, dict[int, list[Cluster]]] = {}
        self._rows = DistanceGrid(max_radius_m)
        self.size = 0

    def insert(self, cluster: Cluster) -> None:
        boxes = self._boxes.get(cluster.category)
        if boxes is None:
            boxes = self._boxes[cluster.category] = {}
        box = cluster.box = self._rows.box(cluster.lat, cluster.lon)
        bucket = boxes.get(box)
        if bucket is None:
            boxes[box] = [cluster]
        else:
            bucket.append(cluster)
        cluster.indexed = True
        self.size += 1

    def remove(self, cluster: Cluster) -> None:
        if not cluster.indexed:
            return
        boxes = self._boxes[cluster.category]
        bucket = boxes[cluster.box]
        if len(bucket) == 1:
            del boxes[cluster.box]
        else:
            bucket.remove(cluster)
        cluster.indexed = False
        self.size -= 1

    def moved(self, cluster: Cluster) -> None:
        """Re-file a cluster whose centre may have crossed into another box."""
        if cluster.indexed and self._rows.box(cluster.lat, cluster.lon) != cluster.box:
            self.remove(cluster)
            self.insert(cluster)

    def near(
        self, category: str, lat: float, lon: float, radius_m: float
    ) -> list[tuple[float, Cluster]]:
        """Clusters of a category whose centre lies within radius_m of the point, with distances."""
        boxes = self._boxes.get(category)
        if not boxes:
            return []
        candidates = self._rows.gather(boxes, lat, lon)
        if not candidates:
            return []
        found: list[tuple[float, Cluster]] = []
        for cluster in candidates:
            distance = haversine_m(lat, lon, cluster.lat, cluster.lon)
            if distance <= radius_m:
                found.append((distance, cluster))
        return found

    def active_cells(self) -> int:
        """Grid boxes holding at least one cluster."""
        return sum(len(boxes) for boxes in self._boxes.values())
