"""Geofences: the example districts, shared borders and points outside every district."""

from pathlib import Path

import orjson
import pytest

from geoincident.geo.fences import GeofenceError, Geofences

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy/examples/districts.geojson"


@pytest.fixture(scope="module")
def example():
    return orjson.loads(EXAMPLE.read_bytes())


def _centre(feature):
    ring = feature["geometry"]["coordinates"][0]
    lons = [lon for lon, _ in ring[:-1]]
    lats = [lat for _, lat in ring[:-1]]
    return sum(lats) / len(lats), sum(lons) / len(lons)


def test_every_example_district_owns_its_centre_and_has_a_department(example):
    fences = Geofences.from_geojson(example)
    assert len(fences) == 6
    for feature in example["features"]:
        assert feature["properties"]["department"].startswith("Public Works")
        assert fences.lookup(*_centre(feature)) == feature["properties"]["name"]


def test_a_point_on_a_shared_border_belongs_to_the_district_listed_first(example):
    fences = Geofences.from_geojson(example)
    southwest, south_central = example["features"][0], example["features"][1]
    border_lon = southwest["geometry"]["coordinates"][0][1][0]  # Southwest's east edge
    assert south_central["geometry"]["coordinates"][0][0][0] == border_lon  # shared exactly
    lat = _centre(southwest)[0]
    assert fences.lookup(lat, border_lon) == "Southwest"
    reordered = {**example, "features": [south_central, southwest, *example["features"][2:]]}
    assert Geofences.from_geojson(reordered).lookup(lat, border_lon) == "South Central"


def test_a_point_outside_every_district_has_no_jurisdiction(example):
    fences = Geofences.from_geojson(example)
    assert fences.lookup(47.60, -122.60) is None  # west of the city
    assert fences.lookup(47.68, -122.33) is None  # inside the city's box, north of the districts


def test_a_feature_without_a_name_is_refused_naming_its_position(example):
    broken = {**example, "features": [{**example["features"][0], "properties": {}}]}
    with pytest.raises(GeofenceError, match="feature 0 has no string property 'name'"):
        Geofences.from_geojson(broken)
