"""The distance grid: every point within the width of another is in its 3 x 3 neighbourhood."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoincident.geo.distance import destination, haversine_m
from geoincident.geo.grid import BoxCounts, BoxTable, DistanceGrid

latitudes = st.one_of(
    st.floats(-90.0, 90.0),
    st.floats(89.0, 90.0),  # near the poles, where rows have few columns
    st.floats(-90.0, -89.0),
)
longitudes = st.one_of(st.floats(-180.0, 180.0), st.floats(179.0, 180.0), st.floats(-180.0, -179.0))


@settings(max_examples=3000, deadline=None)
@given(
    lat=latitudes,
    lon=longitudes,
    width=st.sampled_from([25.0, 250.0, 1000.0, 20_000.0]),
    fraction=st.floats(0.0, 1.0),
    bearing=st.floats(0.0, 360.0),
)
def test_a_point_within_the_width_is_in_the_neighbourhood(lat, lon, width, fraction, bearing):
    grid = DistanceGrid(width)
    other_lat, other_lon = destination(lat, lon, bearing, width * fraction)
    assert haversine_m(lat, lon, other_lat, other_lon) <= width * 1.000001
    assert grid.box(other_lat, other_lon) in grid.neighbourhood(lat, lon)


@settings(max_examples=300, deadline=None)
@given(
    lats=st.lists(st.floats(-89.0, 89.0), min_size=1, max_size=20),
    lon=st.floats(-180.0, 180.0),
    width=st.sampled_from([10.0, 250.0]),
)
def test_rows_that_share_a_kept_slot_give_the_same_boxes_as_a_fresh_grid(lats, lon, width):
    """A grid keeps a row's columns in the slot of its number modulo 16,384: rows that many
    apart take turns in one slot, and every box is still the one a fresh grid computes."""
    grid = DistanceGrid(width)
    span = (1 << 14) * grid.lat_step  # rows this far apart share a slot
    points = [p for lat in lats for p in (lat, lat + span, lat - span) if -90.0 <= p <= 90.0]
    for lat in points:
        assert grid.box(lat, lon) == DistanceGrid(width).box(lat, lon)
        assert grid.neighbourhood(lat, lon) == DistanceGrid(width).neighbourhood(lat, lon)


def test_edges_of_rows_and_columns_and_the_antimeridian():
    grid = DistanceGrid(250.0)
    step = grid.lat_step
    # straddling a row edge: the two points are metres apart in adjacent rows
    lat = 10 * step
    a, b = (lat - 1e-6, 5.0), (lat + 1e-6, 5.0)
    assert grid.box(*a) != grid.box(*b)
    assert grid.box(*b) in grid.neighbourhood(*a)
    # straddling the antimeridian
    east, west = (47.0, 179.99999), (47.0, -179.99999)
    assert haversine_m(*east, *west) < 5
    assert grid.box(*west) in grid.neighbourhood(*east)
    assert grid.box(*east) in grid.neighbourhood(*west)
    # a pole is one box per row
    assert grid.columns(math.floor(90.0 / step))[1] == 1


def test_boxes_are_about_the_width_wide_at_mid_latitudes():
    """Not needlessly coarse: the neighbourhood of a 250 m grid is ~750 m across."""
    grid = DistanceGrid(250.0)
    lat = 47.6
    row = math.floor(lat / grid.lat_step)
    width_deg, _ = grid.columns(row)
    metres = haversine_m(lat, 0.0, lat, width_deg)
    assert 250.0 <= metres < 260.0
    assert haversine_m(lat, 0.0, lat + grid.lat_step, 0.0) == pytest.approx(250.25, rel=1e-3)


def test_a_width_must_be_positive():
    with pytest.raises(ValueError, match="width"):
        DistanceGrid(0.0)


@settings(max_examples=300, deadline=None)
@given(
    points=st.lists(st.tuples(st.floats(47.0, 47.05), st.floats(-122.05, -122.0)), max_size=40),
    lat=st.floats(47.0, 47.05),
    lon=st.floats(-122.05, -122.0),
)
def test_gather_finds_what_probing_the_neighbourhood_finds(points, lat, lon):
    grid = DistanceGrid(250.0)
    boxes: dict[int, list] = {}
    for point in points:
        boxes.setdefault(grid.box(*point), []).append(point)
    probed = sorted(p for box in grid.neighbourhood(lat, lon) for p in boxes.get(box, []))
    assert sorted(grid.gather(boxes, lat, lon)) == probed


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.integers(-3, 3), st.integers(0, (1 << 24) - 1)), max_size=300
    ),
    dense=st.booleans(),
    small=st.booleans(),
)
def test_box_counts_count_what_a_dict_counts(steps, dense, small):
    """Adds and removes in any order (boxes of a few rows and columns collide on their home
    slots; removing shifts entries back) leave the counts a dict keeps, through every resize;
    and so do counts over what a slot holds (two bits of count, where `small`)."""
    counts = BoxCounts(DistanceGrid(500.0))
    if small:
        counts._shift, counts._full = 2, 3
    expected: dict[int, int] = {}
    for add, row, column in steps:
        box = row * (1 << 24) + (column % 5 if dense else column)
        if add or not expected.get(box):
            counts.add(box)
            expected[box] = expected.get(box, 0) + 1
        else:
            counts.remove(box)
            expected[box] -= 1
            if not expected[box]:
                del expected[box]
        assert len(counts) == len(expected)
    for row in range(-3, 4):
        for column in [*range(6), *(c for _, r, c in steps if r == row)]:
            box = row * (1 << 24) + column
            assert counts.get(box) == expected.get(box, 0)
    with pytest.raises(KeyError):
        counts.remove(99 * (1 << 24))


def test_box_counts_hold_the_boxes_of_a_fine_grid_and_refuse_a_finer_one():
    grid = DistanceGrid(0.1)
    counts = BoxCounts(grid)
    for lat, lon in [(89.99, 179.99), (-89.99, -179.99), (0.0, 0.0)]:
        counts.add(grid.box(lat, lon))
        assert counts.get(grid.box(lat, lon)) == 1
    with pytest.raises(ValueError, match="too fine"):
        BoxCounts(DistanceGrid(1e-6))


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["set", "set", "pop", "del"]),
            st.integers(-3, 3),
            st.integers(0, (1 << 24) - 1),
            st.integers(0, 2),
        ),
        max_size=300,
    ),
    dense=st.booleans(),
)
def test_box_tables_hold_what_a_dict_holds(steps, dense):
    """Sets (new boxes and replacements), pops and deletes in any order, in boxes of rows
    around 0 (box 0 and negative boxes among them; the boxes of a few rows and columns collide
    on their home slots) leave what a dict holds, through resizes up and down."""
    table = BoxTable()
    expected: dict[int, object] = {}
    sizes = {len(table._keys)}
    for number, (verb, row, column, kind) in enumerate(steps):
        box = row * (1 << 24) + (column % 5 if dense else column)
        value: object = [number, number] if kind == 2 else ("value", number)
        if verb == "set" or box not in expected:
            if verb != "set":
                with pytest.raises(KeyError):
                    table.pop(box) if verb == "pop" else table.__delitem__(box)
            table[box] = value
            expected[box] = value
        elif verb == "pop":
            assert table.pop(box) is expected.pop(box)
        else:
            del table[box]
            del expected[box]
        sizes.add(len(table._keys))
        assert len(table) == len(expected)
        assert list(table._keys).count(0) == len(table._keys) - len(expected)
        assert table._values.count(None) == len(table._keys) - len(expected)
        assert dict(table.items()) == expected and len(table.items()) == len(expected)
    for row in range(-3, 4):
        for column in [*range(6), (1 << 24) - 1, *(c for _, r, c, _ in steps if r == row)]:
            box = row * (1 << 24) + column
            assert table.get(box) is expected.get(box)
    for box in list(expected):
        table.pop(box)
    assert len(table) == 0 and len(table._keys) == 8
    if len(expected) > 4:
        assert len(sizes) > 1


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.booleans(), st.integers(-2, 2), st.integers(0, 6)), max_size=200)
)
def test_box_tables_add_and_remove_items_as_a_dict_of_items_and_lists(steps):
    """`add` and `remove` keep a box's items as FreeReports kept them in a dict: the item
    alone, or a list of two or more in the order added."""
    table = BoxTable()
    expected: dict[int, object] = {}
    for number, (add, row, column) in enumerate(steps):
        box = row * (1 << 24) + column
        held = expected.get(box)
        if add or held is None:
            item = ("item", number)
            table.add(box, item)
            expected[box] = (
                item if held is None else [*held, item] if type(held) is list else [held, item]
            )
        else:
            item = held[number % len(held)] if type(held) is list else held
            table.remove(box, item)
            if type(held) is list:
                rest = [other for other in held if other is not item]
                expected[box] = rest if len(rest) > 1 else rest[0]
            else:
                del expected[box]
        assert len(table) == len(expected)
    for row in range(-2, 3):
        for column in range(7):
            box = row * (1 << 24) + column
            assert table.get(box) == expected.get(box)
    with pytest.raises(KeyError):
        table.remove(5 * (1 << 24), ("item", 0))


def test_box_tables_refuse_none():
    table = BoxTable()
    with pytest.raises(ValueError, match="None"):
        table.set(0, None)


@settings(max_examples=300, deadline=None)
@given(
    points=st.lists(
        st.one_of(
            st.tuples(st.floats(47.0, 47.05), st.floats(-122.05, -122.0)),
            st.tuples(st.floats(-0.01, 0.01), st.floats(-180.0, -179.99)),  # box 0, row -1
            st.tuples(st.floats(-0.01, 0.01), st.floats(179.99, 180.0)),  # and the antimeridian
            st.tuples(st.floats(89.99, 90.0), st.floats(-180.0, 180.0)),  # rows of few columns
            st.tuples(st.floats(-90.0, -89.99), st.floats(-180.0, 180.0)),
        ),
        max_size=60,
    ),
    deletes=st.lists(st.integers(0, 59), max_size=30),
    probes=st.lists(
        st.one_of(
            st.tuples(st.floats(47.0, 47.05), st.floats(-122.05, -122.0)),
            st.tuples(st.floats(-0.01, 0.01), st.floats(-180.0, 180.0)),
            st.tuples(st.floats(89.99, 90.0), st.floats(-180.0, 180.0)),
            st.tuples(st.floats(-90.0, -89.99), st.floats(-180.0, 180.0)),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_gather_over_a_box_table_finds_what_gather_over_a_dict_finds(points, deletes, probes):
    """The same entries in the same order, a box holding one item or a list of them."""
    grid = DistanceGrid(250.0)
    boxes: dict[int, object] = {}
    table = BoxTable()
    for number, point in enumerate(points):
        box = grid.box(*point)
        item = (number, point)
        held = boxes.get(box)
        boxes[box] = item if held is None else [*held, item] if type(held) is list else [held, item]
        table[box] = boxes[box]
    for number in deletes:
        if number < len(points):
            box = grid.box(*points[number])
            if box in boxes:
                del boxes[box]
                del table[box]
    for lat, lon in probes:
        assert grid.gather_table(table, lat, lon) == grid.gather(boxes, lat, lon)
