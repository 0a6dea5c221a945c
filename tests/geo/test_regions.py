"""Regions for scale-out (geo/regions.py): which region owns a point, which others see it.

The halo is checked by brute force: points sampled on circles around a point (geodesic
distances, `destination`), each classified with `region_of` (itself checked against H3), say
which regions really are within `halo_m`; the map's cached, projected distances must agree.
"""

from __future__ import annotations

import random
from functools import cache

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoincident.geo import destination
from geoincident.geo.regions import (
    RegionMap,
    partition_of_region,
    region_of_cell,
    region_of_point,
)

# name -> centre; Tromsø and Longyearbyen for high latitudes (cells there are stretched in
# longitude, where an equirectangular distance is most wrong)
CITIES = {
    "seattle": (47.6062, -122.3321),
    "singapore": (1.2903, 103.8519),
    "sydney": (-33.8688, 151.2093),
    "sao_paulo": (-23.5505, -46.6333),
    "reykjavik": (64.1466, -21.9426),
    "tromso": (69.6492, 18.9553),
    "longyearbyen": (78.2232, 15.6267),
}
# (region resolution, surge (cell) resolution, halo_m): the default scale-out map, and a finer one
MAPS = [(5, 6, 2000.0), (7, 9, 400.0)]
RADII = 16  # circles sampled inside the halo
BEARINGS = 240  # points per circle
FINE_BEARINGS = 14_400  # on the circle just outside the halo: < 1 m apart at 2 km


@cache
def region_map(resolution: int, cell_resolution: int, halo_m: float, partitions: int = 4):
    return RegionMap(resolution, cell_resolution, halo_m, partitions)


def sampled_regions(regions: RegionMap, lat: float, lon: float) -> dict[str, float]:
    """Region -> the smallest sampled distance (<= halo_m) at which a point of it was found."""
    found: dict[str, float] = {}
    for i in range(RADII + 1):
        radius = 1.0 if i == 0 else regions.halo_m * i / RADII  # the last circle: halo_m itself
        for b in range(BEARINGS):
            region = regions.region_of(*destination(lat, lon, 360.0 * b / BEARINGS, radius))
            if region not in found:
                found[region] = radius
    return found


def reaches(regions: RegionMap, lat: float, lon: float, region: str, radius: float) -> bool:
    """Whether `region` has a point on the circle of `radius` around the point (finely sampled):
    a region that comes within `radius` and goes on past it (every region is far larger than
    a halo) crosses that circle."""
    return any(
        regions.region_of(*destination(lat, lon, 360.0 * b / FINE_BEARINGS, radius)) == region
        for b in range(FINE_BEARINGS)
    )


def halo_problems(regions: RegionMap, lat: float, lon: float) -> list[str]:
    owner, halo = regions.route(lat, lon)
    problems = []
    if owner != regions.region_of(lat, lon):
        problems.append(f"route() says {owner}, region_of() {regions.region_of(lat, lon)}")
    if owner in halo:
        problems.append(f"the owner {owner} is in its own halo")
    if len(set(halo)) != len(halo):
        problems.append(f"duplicates in the halo {halo}")
    found = sampled_regions(regions, lat, lon)
    for region, distance in found.items():
        if region != owner and region not in halo:
            problems.append(f"{region} has a point {distance:.0f} m away, not in the halo {halo}")
    for region in halo:
        if region not in found and not reaches(regions, lat, lon, region, regions.halo_m + 1.0):
            problems.append(f"{region} is in the halo but not within {regions.halo_m} + 1 m")
    return problems


# ---------------------------------------------------------------------------- the owner


def test_a_point_belongs_to_the_parent_of_its_surge_cell_not_the_coarse_cell_around_it():
    """H3 children stick out of their parent: near a border the region at `resolution`
    containing a point can differ from the parent of its surge cell, and the latter owns it
    (every surge cell wholly inside one region)."""
    regions = region_map(5, 6, 2000.0)
    rng = random.Random(11)
    differing = []
    for _ in range(4000):
        lat, lon = destination(*CITIES["seattle"], rng.uniform(0, 360), rng.uniform(0, 20_000))
        surge_cell = h3.latlng_to_cell(lat, lon, 6)
        parent = h3.cell_to_parent(surge_cell, 5)
        assert regions.region_of(lat, lon) == parent
        assert region_of_point(lat, lon, 6, 5) == parent
        assert region_of_cell(surge_cell, 5) == parent
        if h3.latlng_to_cell(lat, lon, 5) != parent:
            differing.append((lat, lon))
    # the distinction is real (a few percent of the points), so the assertions above tell
    assert len(differing) > 20
    lat, lon = differing[0]
    assert regions.region_of(lat, lon) != h3.latlng_to_cell(lat, lon, 5)


# ---------------------------------------------------------------------------- the halo


def near_a_border(
    regions: RegionMap, start: tuple[float, float], bearing: float
) -> tuple[float, float]:
    """The first point (to a metre) where going from `start` along `bearing` changes region."""
    owner = regions.region_of(*start)
    step = regions.halo_m / 4 or 100.0
    lo, hi = 0.0, step
    while regions.region_of(*destination(*start, bearing, hi)) == owner:
        lo, hi = hi, hi + step
    while hi - lo > 1.0:
        mid = (lo + hi) / 2
        if regions.region_of(*destination(*start, bearing, mid)) == owner:
            lo = mid
        else:
            hi = mid
    return destination(*start, bearing, lo)


@settings(max_examples=60, deadline=None, database=None)
@given(
    city=st.sampled_from(sorted(CITIES)),
    which=st.sampled_from(range(len(MAPS))),
    bearing=st.floats(0, 360),
    fraction=st.floats(0, 1),
    back=st.booleans(),
    # from the border: anywhere up to past the halo, or right at its edge
    offset=st.one_of(st.floats(0, 1.3), st.floats(0.95, 1.02)),
)
def test_the_halo_is_exactly_the_other_regions_within_halo_m(
    city, which, bearing, fraction, back, offset
):
    """At a point of a city (high latitudes included) up to 1.3 x halo_m from a border, often
    right at the halo's edge: the regions sampled within halo_m are all in the halo, and every
    halo region comes within halo_m + 1 m."""
    regions = region_map(*MAPS[which])
    start = destination(*CITIES[city], bearing, 12_000.0 * fraction)
    border = near_a_border(regions, start, bearing)
    lat, lon = destination(*border, bearing + (180.0 if back else 0.0), regions.halo_m * offset)
    assert halo_problems(regions, lat, lon) == []


def test_the_halo_property_is_not_vacuous():
    """The sampled points near borders do have halos, with several regions at times."""
    rng = random.Random(5)
    sizes = []
    for city in ("seattle", "tromso"):
        regions = region_map(5, 6, 2000.0)
        for _ in range(300):
            point = destination(*CITIES[city], rng.uniform(0, 360), rng.uniform(0, 12_000))
            sizes.append(len(regions.route(*point)[1]))
    assert sum(1 for n in sizes if n >= 1) > 30
    assert sum(1 for n in sizes if n >= 2) > 3


@pytest.mark.parametrize("resolution,cell_resolution,halo_m", MAPS)
def test_a_point_far_from_every_border_has_no_halo(resolution, cell_resolution, halo_m):
    regions = region_map(resolution, cell_resolution, halo_m)
    for city in CITIES.values():
        region = h3.latlng_to_cell(*city, resolution)
        centre = h3.cell_to_latlng(region)  # an edge is ~4 x halo_m away at both resolutions
        assert regions.route(*centre) == (region, [])
        assert regions.targets(*centre) == (regions.partition_of(region), [])
        assert halo_problems(regions, *centre) == []


def test_without_a_halo_nothing_is_copied_even_on_a_border():
    with_halo, without = region_map(5, 6, 2000.0), region_map(5, 6, 0.0)
    rng = random.Random(3)
    checked = 0
    for _ in range(500):
        point = destination(*CITIES["seattle"], rng.uniform(0, 360), rng.uniform(0, 12_000))
        owner, halo = with_halo.route(*point)
        if halo:
            checked += 1
            assert without.route(*point) == (owner, [])
            assert without.targets(*point) == (without.partition_of(owner), [])
    assert checked > 10


# A point 500 m west of the antimeridian on Taveuni (Fiji), ~1.6 km from a region whose
# surge cells lie across it; and one 10 km east of it that gets a halo region ~10 km away.
ANTIMERIDIAN = [
    pytest.param((-16.881820507176684, 179.99539255869763), id="missed-across-180"),
    pytest.param((-16.809631057152618, -179.90335658335437), id="false-halo-across-180"),
]


@pytest.mark.parametrize("point", ANTIMERIDIAN)
def test_the_halo_is_right_across_the_antimeridian(point):
    assert halo_problems(region_map(5, 6, 2000.0), *point) == []


# ---------------------------------------------------------------------------- partitions


@pytest.mark.parametrize(
    "region,partitions,expected",
    [
        ("8528d543fffffff", 4, 0),
        ("8528d55bfffffff", 4, 3),
        ("8528d553fffffff", 4, 2),
        ("8528d54bfffffff", 8, 4),
        ("8528d543fffffff", 2_147_483_647, 620_201_610),
        ("8928308280fffff", 1_000_003, 897_870),
        ("8528d543fffffff", 1, 0),
    ],
)
def test_the_partition_of_a_region_is_a_fixed_stable_hash(region, partitions, expected):
    """Every process, replay and version must agree on it: a change of hash fails here."""
    assert partition_of_region(region, partitions) == expected
    if partitions <= 1024:
        regions = RegionMap(5, 6, 0.0, partitions)
        assert regions.partition_of(region) == expected
        assert regions.partition_of(region) == expected  # cached: the same


@pytest.mark.parametrize("partitions", [3, 4, 8])
def test_regions_spread_over_every_partition(partitions):
    regions = h3.cell_to_children(h3.latlng_to_cell(*CITIES["seattle"], 1), 5)  # 2,401
    counts = [0] * partitions
    for region in regions:
        partition = partition_of_region(region, partitions)
        assert 0 <= partition < partitions
        counts[partition] += 1
    mean = len(regions) / partitions
    assert all(0.8 * mean < n < 1.2 * mean for n in counts), counts


@pytest.mark.parametrize(
    "arguments,message",
    [
        ((7, 6, 2000.0, 4), "region resolution 7"),
        ((-1, 6, 2000.0, 4), "region resolution -1"),
        ((5, 16, 2000.0, 4), "region resolution 5"),
        ((5, 6, -0.5, 4), "halo_m"),
        ((5, 6, 2000.0, 0), "partitions"),
        ((5, 6, 2000.0, -3), "partitions"),
    ],
)
def test_invalid_arguments_raise(arguments, message):
    with pytest.raises(ValueError, match=message):
        RegionMap(*arguments)


def test_equal_resolutions_are_allowed():
    regions = RegionMap(6, 6, 500.0, 4)
    lat, lon = CITIES["seattle"]
    assert regions.region_of(lat, lon) == h3.latlng_to_cell(lat, lon, 6)


@settings(max_examples=300, deadline=None, database=None)
@given(
    city=st.sampled_from(sorted(CITIES)),
    bearing=st.floats(0, 360),
    fraction=st.floats(0, 1),
    partitions=st.sampled_from([1, 2, 3]),
)
def test_targets_are_the_owners_partition_and_the_other_halo_partitions_once(
    city, bearing, fraction, partitions
):
    regions = region_map(5, 6, 2000.0, partitions)
    point = destination(*CITIES[city], bearing, 12_000.0 * fraction)
    owner_region, halo = regions.route(*point)
    owner, others = regions.targets(*point)
    assert owner == partition_of_region(owner_region, partitions)
    assert owner not in others
    assert len(others) == len(set(others))
    assert set(others) == {partition_of_region(r, partitions) for r in halo} - {owner}


def test_targets_leave_out_a_halo_region_on_the_owners_partition_and_merge_shared_ones():
    """The property above, on points that exercise it: a halo region on the owner's own
    partition, and two halo regions on one partition."""
    regions = region_map(5, 6, 2000.0, 2)
    rng = random.Random(8)
    same_as_owner = shared = 0
    for _ in range(3000):
        point = destination(*CITIES["seattle"], rng.uniform(0, 360), rng.uniform(0, 15_000))
        owner_region, halo = regions.route(*point)
        owner, others = regions.targets(*point)
        halo_partitions = [regions.partition_of(r) for r in halo]
        if owner in halo_partitions:
            same_as_owner += 1
        if len(halo_partitions) != len(set(halo_partitions)):
            shared += 1
        assert owner not in others and len(others) == len(set(others))
        assert set(others) == set(halo_partitions) - {owner}
    assert same_as_owner > 5 and shared > 0
