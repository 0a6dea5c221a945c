"""H3 indexing (h3-py v4 API): cells, the disk that covers a radius, and covering polygons."""

from __future__ import annotations

import math
from collections.abc import Iterable

import h3
import shapely
from shapely.geometry import MultiPoint, mapping

MAX_RESOLUTION = 15

# H3 hexagons are not all the same size: edges shrink towards the icosahedron's vertices.
# Across the globe the shortest hexagon edge at a resolution is about 0.6x the average
# (h3geo.org cell statistics); half the average keeps a margin for that and for pentagon
# neighbourhoods, at the price of sometimes looking one ring further than needed.
_MIN_EDGE_FRACTION = 0.5


def cell_of(lat: float, lon: float, resolution: int) -> str:
    """The H3 cell (hex string) containing a point."""
    return h3.latlng_to_cell(lat, lon, resolution)


def min_edge_m(resolution: int) -> float:
    """A lower bound of a hexagon's edge length at a resolution, in metres."""
    return _MIN_EDGE_FRACTION * h3.average_hexagon_edge_length(resolution, unit="m")


def disk_k_for_radius(radius_m: float, resolution: int) -> int:
    """The smallest k for which grid_disk(cell_of(p), k) holds every point within radius_m of p.

    A straight segment of length r crosses at most 1 + floor(r / w) cell boundaries, where w is
    the narrowest width of a hexagon (sqrt(3) x its shortest edge): one boundary may lie right next
    to p, every further one needs a whole cell's width. Each crossing is one grid step.
    """
    if radius_m < 0:
        raise ValueError("radius_m must be >= 0")
    width_m = math.sqrt(3.0) * min_edge_m(resolution)
    return 1 + int(radius_m // width_m)


def neighbourhood(cell: str, k: int) -> list[str]:
    """The cells within k grid steps of `cell` (the cell itself included)."""
    return h3.grid_disk(cell, k)


def covering_polygon(cells: Iterable[str], points: Iterable[tuple[float, float]] = ()) -> dict:
    """GeoJSON Polygon: the convex hull of the given cells' boundaries (and any extra points).

    Always a single Polygon (the contract's shape), even when the member cells are not
    contiguous; coordinates are rounded to 7 decimals (~1 cm) so the output is byte-stable.
    """
    vertices: list[tuple[float, float]] = []
    for cell in cells:
        vertices.extend((lon, lat) for lat, lon in h3.cell_to_boundary(cell))
    vertices.extend((lon, lat) for lat, lon in points)
    if not vertices:
        raise ValueError("covering_polygon needs at least one cell or point")
    hull = MultiPoint(vertices).convex_hull
    if hull.geom_type != "Polygon":  # a single point or a line: widen it a little
        hull = hull.buffer(1e-5)
    hull = shapely.set_precision(hull, 1e-7)
    ring = mapping(hull)["coordinates"][0]
    return {
        "type": "Polygon",
        "coordinates": [[[round(x, 7), round(y, 7)] for x, y in ring]],
    }


def region_polygon(cell: str) -> dict:
    """GeoJSON Polygon of one H3 cell (a surge's region)."""
    ring = [[round(lon, 7), round(lat, 7)] for lat, lon in h3.cell_to_boundary(cell)]
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def regions_polygon(cells: Iterable[str]) -> dict:
    """GeoJSON Polygon of the union of H3 cells (a surge over adjacent regions); the convex
    hull of their boundaries if they are not one connected area."""
    cells = sorted(cells)
    if len(cells) == 1:
        return region_polygon(cells[0])
    shape = h3.cells_to_geo(cells)
    if shape["type"] != "Polygon":
        return covering_polygon(cells)
    rings = [[[round(x, 7), round(y, 7)] for x, y in ring] for ring in shape["coordinates"]]
    return {"type": "Polygon", "coordinates": rings}
