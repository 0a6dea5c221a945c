"""Spatial clusters of same-category reports, and the index that finds them.

A cluster is the set of reports, within one category's time window, that lie within
`radius_m` of the cluster's centre. Clusters are indexed by the box of their centre in a grid
of boxes at least the radius wide, so finding the clusters near a report is a 3 x 3 box lookup
plus exact haversine distances: box edges never split a cluster.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from geoincident.detectors.independence import Independence
from geoincident.detectors.report import Report
from geoincident.geo.distance import WeightedCentroid, haversine_m
from geoincident.geo.grid import DistanceGrid

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
        "indexed",
        "box",
        "incident",
    )

    def __init__(self, founder: Report, weight: float) -> None:
        self.category = founder.category
        self.founder_ts_ms = founder.ts_ms
        self.founder_id = founder.id
        self.members: list[Report] = [founder]
        # Weights other than 1.0, by report id; None while there are none (the common case:
        # most clusters are one report of weight 1, and a dict each would double their size).
        self.weights: dict[str, float] | None = None if weight == 1.0 else {founder.id: weight}
        # Most clusters never get a second member: the union-find is built when one arrives.
        self.independence: Independence | None = None
        self.lat = founder.lat
        self.lon = founder.lon
        self.indexed = False
        self.box = 0
        self.incident: Incident | None = None

    @classmethod
    def for_incident(cls, incident: Incident) -> Cluster:
        """An empty window around a restored incident: new reports nearby join it."""
        cluster = cls.__new__(cls)
        cluster.category = incident.category
        cluster.founder_ts_ms, cluster.founder_id = incident.seniority
        cluster.members = []
        cluster.weights = None
        cluster.independence = None
        cluster.lat, cluster.lon = incident.centre()
        cluster.indexed = False
        cluster.box = 0
        cluster.incident = incident
        return cluster

    @property
    def score(self) -> float:
        if self.independence is None:
            return self.weight_of(self.founder_id) if self.members else 0.0
        return self.independence.score

    def weight_of(self, report_id: str) -> float:
        weights = self.weights
        return 1.0 if weights is None else weights.get(report_id, 1.0)

    def _independence(self) -> Independence:
        independence = self.independence
        if independence is None:
            independence = self.independence = Independence()
            weight_of = self.weight_of
            for member in self.members:
                independence.add(member.reporter, member.device, weight_of(member.id))
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
        if weight != 1.0:
            if self.weights is None:
                self.weights = {}
            self.weights[report.id] = weight
        independence.add(report.reporter, report.device, weight)

    def remove(self, report: Report) -> None:
        members = self.members
        if members and members[0] is report:
            members.pop(0)
        else:
            members.remove(report)
        if self.weights:
            self.weights.pop(report.id, None)

    def rebuild(self, accuracy: AccuracyWeights) -> None:
        """Recompute the window's independence and centre after members left or moved."""
        independence = Independence()
        centroid = WeightedCentroid()
        weight_of = self.weight_of
        for member in self.members:
            independence.add(member.reporter, member.device, weight_of(member.id))
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
        weight_of = self.weight_of
        for member in self.members:
            if start_ms <= member.ts_ms <= end_ms:
                independence.add(member.reporter, member.device, weight_of(member.id))
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
    """Clusters by category and the grid box of their centre (geo.grid.DistanceGrid: boxes at least
    `max_radius_m` wide at every latitude, wrapping at the antimeridian).

    Every cluster whose centre lies within the radius of a point is in the 3 x 3 boxes around
    the point's box, so a lookup is at most nine dict probes plus exact haversine distances, and
    grid edges never split a cluster. The neighbourhood covers ~0.6 km² for a 250 m radius,
    against ~5 km² for the k = 1 disk of the H3 resolution that covers it, and naming a box costs
    a fraction of an H3 cell; H3 names the cells of the incidents themselves.
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
