"""Great-circle distances and centroids on the WGS84 sphere approximation."""

from __future__ import annotations

import math
from collections.abc import Iterable

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius; H3 uses the same sphere

_DEG = math.pi / 180.0


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in metres between two points given in degrees."""
    phi1 = lat1 * _DEG
    phi2 = lat2 * _DEG
    dphi = phi2 - phi1
    dlmb = (lon2 - lon1) * _DEG
    a = math.sin(dphi * 0.5) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb * 0.5) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def destination(
    lat: float, lon: float, bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """The point reached from (lat, lon) going `distance_m` along `bearing_deg` (0 = north)."""
    delta = distance_m / EARTH_RADIUS_M
    theta = bearing_deg * _DEG
    phi1 = lat * _DEG
    lmb1 = lon * _DEG
    sin_phi2 = math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
    lmb2 = lmb1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * sin_phi2,
    )
    lon2 = (lmb2 / _DEG + 540.0) % 360.0 - 180.0
    return phi2 / _DEG, lon2


def accuracy_weight(accuracy_m: float | None, default_accuracy_m: float, floor_m: float) -> float:
    """Inverse-variance weight of a position with a GPS accuracy radius.

    A 5 m fix pulls the centroid 100x harder than a 50 m one; the floor keeps a claimed 0 m
    accuracy from dominating everything.
    """
    acc = default_accuracy_m if accuracy_m is None else max(accuracy_m, floor_m)
    return 1.0 / (acc * acc)


class WeightedCentroid:
    """Running weighted mean of positions, as unit vectors so it is safe across the antimeridian."""

    __slots__ = ("x", "y", "z", "weight")

    def __init__(self) -> None:
        self.x = 0.0
        self.y = 0.0
        self.z = 0.0
        self.weight = 0.0

    def __getstate__(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.z, self.weight)

    def __setstate__(self, state: tuple[float, float, float, float]) -> None:
        self.x, self.y, self.z, self.weight = state

    def add(self, lat: float, lon: float, weight: float) -> None:
        phi = lat * _DEG
        lmb = lon * _DEG
        cos_phi = math.cos(phi)
        self.x += weight * cos_phi * math.cos(lmb)
        self.y += weight * cos_phi * math.sin(lmb)
        self.z += weight * math.sin(phi)
        self.weight += weight

    def latlon(self) -> tuple[float, float]:
        x, y, z = self.x, self.y, self.z
        hyp = math.hypot(x, y)
        return math.atan2(z, hyp) / _DEG, math.atan2(y, x) / _DEG


def weighted_centroid(points: Iterable[tuple[float, float, float]]) -> tuple[float, float]:
    """Weighted centroid of (lat, lon, weight) triples."""
    acc = WeightedCentroid()
    for lat, lon, weight in points:
        acc.add(lat, lon, weight)
    if acc.weight <= 0.0:
        raise ValueError("weighted_centroid needs at least one point with a positive weight")
    return acc.latlon()
