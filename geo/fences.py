"""Geofences: which jurisdiction owns a point (GeoJSON FeatureCollection, shapely STRtree)."""

from __future__ import annotations

from pathlib import Path

import orjson
import shapely
from shapely.geometry import Point, shape
from shapely.strtree import STRtree

from geoincident.files import MIB, FileTooLarge, read_bounded

# The geofence file is read whole at start; past this it is refused, naming the file.
MAX_GEOFENCE_BYTES = 64 * MIB


class GeofenceError(ValueError):
    """A geofence file that cannot be used."""


class Geofences:
    """Point-in-polygon lookup over named areas.

    Features are tried in file order; when areas overlap, the first one listed owns the point,
    so operators control precedence by ordering the file.
    """

    def __init__(self, names: list[str], geometries: list) -> None:
        if len(names) != len(geometries):
            raise ValueError("names and geometries differ in length")
        self._names = names
        self._geometries = geometries
        for geometry in geometries:
            shapely.prepare(geometry)
        self._tree = STRtree(geometries) if geometries else None

    @classmethod
    def from_geojson(cls, document: dict) -> Geofences:
        if document.get("type") != "FeatureCollection":
            raise GeofenceError("geofences must be a GeoJSON FeatureCollection")
        names: list[str] = []
        geometries = []
        for position, feature in enumerate(document.get("features") or []):
            name = (feature.get("properties") or {}).get("name")
            if not isinstance(name, str) or not name:
                raise GeofenceError(f"feature {position} has no string property 'name'")
            try:
                geometry = shape(feature["geometry"])
            except Exception as exc:  # shapely raises several types for bad geometry
                raise GeofenceError(f"feature {position} ({name}): bad geometry: {exc}") from exc
            if geometry.geom_type not in ("Polygon", "MultiPolygon"):
                raise GeofenceError(f"feature {position} ({name}): not a (Multi)Polygon")
            names.append(name)
            geometries.append(geometry)
        return cls(names, geometries)

    @classmethod
    def from_file(cls, path: str | Path, max_bytes: int = MAX_GEOFENCE_BYTES) -> Geofences:
        try:
            document = orjson.loads(read_bounded(path, max_bytes))
        except FileTooLarge:
            raise GeofenceError(
                f"geofences {path} is larger than {max_bytes:,} bytes (a city's districts take "
                "a few megabytes: simplify the polygons)"
            ) from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise GeofenceError(f"cannot read geofences {path}: {exc}") from exc
        if not isinstance(document, dict):
            raise GeofenceError(f"geofences {path}: not a GeoJSON object")
        return cls.from_geojson(document)

    def __len__(self) -> int:
        return len(self._names)

    def lookup(self, lat: float, lon: float) -> str | None:
        """Name of the first area containing the point, or None."""
        if self._tree is None:
            return None
        point = Point(lon, lat)
        hits = self._tree.query(point, predicate="intersects")
        if len(hits) == 0:
            return None
        return self._names[int(min(hits))]
