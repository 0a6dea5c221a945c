import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, shape

from geoincident.geo import (
    GeofenceError,
    Geofences,
    cell_of,
    covering_polygon,
    destination,
    disk_k_for_radius,
    haversine_m,
    weighted_centroid,
)


def test_haversine_matches_a_known_distance():
    # Paris (Notre-Dame) to London (Trafalgar Square): ~342.5 km great-circle.
    assert haversine_m(48.8530, 2.3499, 51.5080, -0.1281) == pytest.approx(342_500, rel=0.005)
    assert haversine_m(10.0, 20.0, 10.0, 20.0) == 0.0


def test_destination_goes_the_distance_asked():
    lat, lon = destination(47.6, -122.3, 77.0, 1234.0)
    assert haversine_m(47.6, -122.3, lat, lon) == pytest.approx(1234.0, abs=0.01)


@pytest.mark.parametrize("resolution", range(5, 11))
@settings(max_examples=150, deadline=None)
@given(
    lat=st.floats(-70, 70),
    lon=st.floats(-179, 179),
    bearing=st.floats(0, 360),
    fraction=st.floats(0, 1),
)
def test_disk_of_k_holds_every_point_within_the_radius(resolution, lat, lon, bearing, fraction):
    radius_m = 250.0
    k = disk_k_for_radius(radius_m, resolution)
    other = destination(lat, lon, bearing, radius_m * fraction)
    disk = set(h3.grid_disk(cell_of(lat, lon, resolution), k))
    assert cell_of(*other, resolution) in disk


def test_weighted_centroid_leans_to_the_heavier_point():
    lat, lon = weighted_centroid([(47.0, -122.0, 3.0), (47.001, -122.0, 1.0)])
    assert lat == pytest.approx(47.00025, abs=1e-6)
    assert lon == pytest.approx(-122.0, abs=1e-9)


def test_weighted_centroid_is_safe_across_the_antimeridian():
    lat, lon = weighted_centroid([(10.0, 179.9, 1.0), (10.0, -179.9, 1.0)])
    assert abs(abs(lon) - 180.0) < 1e-6


def test_covering_polygon_is_one_polygon_covering_all_member_cells():
    cells = [cell_of(47.6, -122.33, 10), cell_of(47.61, -122.34, 10)]
    polygon = shape(covering_polygon(cells))
    assert polygon.geom_type == "Polygon"
    for cell in cells:
        lat, lon = h3.cell_to_latlng(cell)
        assert polygon.contains(Point(lon, lat))


def _square(name, lon0, lat0, size):
    ring = [[lon0, lat0], [lon0 + size, lat0], [lon0 + size, lat0 + size], [lon0, lat0 + size]]
    return {
        "type": "Feature",
        "properties": {"name": name},
        "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
    }


def test_geofence_lookup_names_the_owner_and_the_first_listed_wins_overlaps():
    fences = Geofences.from_geojson(
        {
            "type": "FeatureCollection",
            "features": [
                _square("north", -122.4, 47.6, 0.1),
                _square("wide", -122.5, 47.5, 0.5),
            ],
        }
    )
    assert fences.lookup(47.65, -122.35) == "north"
    assert fences.lookup(47.55, -122.45) == "wide"
    assert fences.lookup(10.0, 10.0) is None


def test_geofence_without_a_name_is_refused_with_its_position():
    feature = _square("x", 0, 0, 1)
    feature["properties"] = {}
    with pytest.raises(GeofenceError, match="feature 0"):
        Geofences.from_geojson({"type": "FeatureCollection", "features": [feature]})
