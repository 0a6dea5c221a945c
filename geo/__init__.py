"""Pure geometry: H3 cells, a distance grid, distances, centroids, geofences. No Kafka, no clock."""

from geoincident.geo.cells import (
    cell_of,
    covering_polygon,
    disk_k_for_radius,
    neighbourhood,
    region_polygon,
)
from geoincident.geo.distance import (
    EARTH_RADIUS_M,
    WeightedCentroid,
    accuracy_weight,
    destination,
    haversine_m,
    weighted_centroid,
)
from geoincident.geo.fences import GeofenceError, Geofences
from geoincident.geo.grid import DistanceGrid

__all__ = [
    "EARTH_RADIUS_M",
    "DistanceGrid",
    "GeofenceError",
    "Geofences",
    "WeightedCentroid",
    "accuracy_weight",
    "cell_of",
    "covering_polygon",
    "destination",
    "disk_k_for_radius",
    "haversine_m",
    "neighbourhood",
    "region_polygon",
    "weighted_centroid",
]
