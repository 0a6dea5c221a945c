"""Scale-out without a broker (stream/routing.py): the router's copies, marks and DLQ, the
region cores' ownership, channels, halo copies and actions, and `RoutedCores` (both stages in
one process, as `geoincident replay` runs them) against one unsharded detector."""

from __future__ import annotations

import logging
import random
import struct
from collections import Counter
from functools import cache

import h3
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoincident.detectors import DetectorParams, Report
from geoincident.detectors.engine import Detector
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.lifecycle import incident_id_for, shard_of_id
from geoincident.detectors.significance import SignificanceParams
from geoincident.geo import destination
from geoincident.geo.regions import RegionMap
from geoincident.stream.checkpoint import decode, encode
from geoincident.stream.config import ConfigError, ScaleConfig, Settings, TopicsConfig
from geoincident.stream.config import load_settings as load
from geoincident.stream.routing import (
    ACTION,
    HEADER_SIZE,
    MARK,
    REPORT,
    RegionCore,
    RoutedCores,
    Router,
    envelope,
    halo_m_for,
    open_envelope,
    open_routed,
)
from geoincident.stream.runtime import INTERNAL_ERROR, Outputs, WorkerCore
from tests.builders import MINUTE_MS, SPOT, T0_MS, line, report, ring
from tests.detectors.test_surge import CATEGORY as SURGE_CATEGORY
from tests.detectors.test_surge import HOUR_MS, background, burst, clock_start
from tests.integration.test_scale_out import (
    border_points,
    city_stream,
    replay_values,
    same_incidents,
)

NOW_MS = T0_MS + 24 * 60 * MINUTE_MS
RESOLUTION = 5  # regions of ~250 km2, as the scale-out integration test
LATENESS_MS = DetectorParams().allowed_lateness_ms  # 120 s
PLAIN = Settings()
SCALED = Settings(scale=ScaleConfig(region_resolution=RESOLUTION))  # 4 routed partitions
SCALED_PARAMS = SCALED.detector_params()
ONE = RegionMap(RESOLUTION, 6, 2000.0, 1)  # every region on one partition
PARAMS = DetectorParams(shard_resolution=RESOLUTION)


def regions_of(configured: Settings = SCALED) -> RegionMap:
    regions = configured.region_map(configured.detector_params())
    assert regions is not None
    return regions


def mark(channel: int, max_ts_ms: int, idle_ms: int) -> bytes:
    """A router's mark as it is on the wire: (latest event time routed or -1, idle ms)."""
    return envelope(MARK, False, channel, struct.pack(">qq", max_ts_ms, idle_ms))


def batch(values: list[bytes], start: int = 0, ts_ms: int = NOW_MS) -> list:
    return [(start + n, value, ts_ms) for n, value in enumerate(values)]


def owned(reports: list[Report], channel: int = 0) -> list[bytes]:
    return [envelope(REPORT, True, channel, line(r)) for r in reports]


def halo(reports: list[Report], channel: int = 0) -> list[bytes]:
    return [envelope(REPORT, False, channel, line(r)) for r in reports]


def opened(events: list[IncidentEvent]) -> list[IncidentEvent]:
    return [e for e in events if e.event == "opened"]


def dlq(out: Outputs, actions: bool = False) -> list[dict]:
    return [orjson.loads(record) for record in (out.action_dlq if actions else out.dlq)]


@cache
def border_site() -> tuple[tuple[float, float], float]:
    """A point on a region border and a bearing across it whose two regions are on different
    partitions of the routed topic (4): 30 m either way lies in another region."""
    regions = regions_of()
    for point in border_points(12, random.Random(2)):
        for bearing in range(0, 180, 5):
            a = regions.region_of(*destination(*point, bearing, 30.0))
            b = regions.region_of(*destination(*point, bearing + 180.0, 30.0))
            if a != b and regions.partition_of(a) != regions.partition_of(b):
                return point, float(bearing)
    raise AssertionError("no border between two partitions found")


def border_cluster(prefix: str = "w", start_minute: float = 0.0) -> list[Report]:
    """Five witnesses 30 m either side of the border, alternating sides; the founder (the
    first) on the side the bearing points to."""
    point, bearing = border_site()
    reports = []
    for n in range(5):
        lat, lon = destination(*point, bearing + 180.0 * (n % 2), 30.0)
        reports.append(
            report(
                f"{prefix}{n}",
                start_minute + n,
                lat,
                lon,
                reporter=f"{prefix}-witness{n}",
                device=f"{prefix}-phone{n}",
                category="pothole",
            )
        )
    return reports


def tag_partitions(cores: RoutedCores) -> list[tuple[int, IncidentEvent]]:
    """Records which routed partition each event of `cores` comes from."""
    tagged: list[tuple[int, IncidentEvent]] = []
    for core in cores.cores:

        def on_routed(records, now_ms, silent=False, core=core, inner=core.on_routed):
            out = inner(records, now_ms, silent)
            tagged.extend((core.partition, event) for event in out.incidents)
            return out

        def flush(now_ms=None, core=core, inner=core.flush):
            out = inner(now_ms)
            tagged.extend((core.partition, event) for event in out.incidents)
            return out

        core.on_routed = on_routed  # type: ignore[method-assign]
        core.flush = flush  # type: ignore[method-assign]
    return tagged


def feed(core, values: list[bytes], cuts=()) -> tuple[list[bytes], list[bytes]]:
    """A replay of `values` in batches cut at `cuts`: (events as JSON, DLQ records)."""
    events: list[bytes] = []
    records: list[bytes] = []
    start = 0
    for end in [*sorted({c for c in cuts if c < len(values)}), len(values)]:
        if end <= start:
            continue
        out = core.on_reports(0, [(n, values[n], 0) for n in range(start, end)], None)
        events += [e.to_json() for e in out.incidents]
        records += out.dlq
        start = end
    out = core.flush()
    events += [e.to_json() for e in out.incidents]
    records += out.dlq
    return events, records


def scaled_core() -> RoutedCores:
    return RoutedCores(SCALED_PARAMS, regions_of(), "reports")


def plain_core() -> WorkerCore:
    return WorkerCore(PLAIN.detector_params(), "reports", source_is_file=True)


def replay_both(values: list[bytes]) -> dict[str, tuple[list[dict], list[dict]]]:
    """`geoincident replay` of the values, unsharded and with [scale]: (events, DLQ)."""
    return {
        name: replay_values(values, configured)
        for name, configured in (("plain", PLAIN), ("scaled", SCALED))
    }


# ---------------------------------------------------------------------------- envelopes


@pytest.mark.parametrize("kind", [REPORT, ACTION, MARK])
@pytest.mark.parametrize("owner", [True, False])
@pytest.mark.parametrize("channel", [0, 3, 65_535])
@pytest.mark.parametrize("value", [b"", b'{"id":"r-1"}', bytes(range(256))])
@pytest.mark.parametrize("floor", [-1, 0, 1_764_000_000_000])
def test_an_envelope_opens_to_what_was_put_in(kind, owner, channel, value, floor):
    wrapped = envelope(kind, owner, channel, value, floor)
    assert len(wrapped) == HEADER_SIZE + len(value)
    assert open_envelope(wrapped) == (kind, owner, channel, value)
    assert open_routed(wrapped) == (kind, owner, channel, floor, -1, value)
    placed = envelope(kind, owner, channel, value, floor, 41)
    assert open_routed(placed) == (kind, owner, channel, floor, 41, value)


@pytest.mark.parametrize("value", [b"", b"\x01", b"\x01\x01\x00"])
def test_a_value_shorter_than_a_header_opens_as_kind_0(value):
    assert open_envelope(value) == (0, False, 0, value)


def test_a_foreign_value_opens_as_kind_0():
    value = line(report("r-1", 0))
    assert open_envelope(value)[0] == 0


def test_a_region_core_skips_what_is_not_a_routed_record_and_goes_on(caplog):
    core = RegionCore(PARAMS, ONE, 0, "routed")
    good = report("good", 0)
    records = batch([b"ab", line(report("raw", 0)), *owned([good])])
    with caplog.at_level(logging.WARNING, logger="geoincident.worker"):
        out = core.on_routed(records, None)
    skipped = [r for r in caplog.records if "routed_record_skipped" in r.getMessage()]
    assert len(skipped) == 2
    assert out.dlq == [] and out.outcomes == Counter(accepted=1)


def test_a_malformed_mark_does_not_stop_the_core():
    core = RegionCore(PARAMS, ONE, 0, "routed", channels=[0], now_ms=NOW_MS)
    out = core.on_routed(batch([b"\x03\x00\x00\x00", *owned([report("good", 0)])]), NOW_MS)
    assert out.outcomes["accepted"] == 1


# ---------------------------------------------------------------------------- the router


def test_a_malformed_report_goes_to_the_dlq_once_naming_where_it_was_read():
    router = Router(PARAMS, regions_of(), "reports", "incident-actions")
    bad = b'{"id": "bad", "ts": '
    good = line(report("good", 0))
    routed = router.route_reports(3, [(41, bad, 1_000), (42, good, 2_000)], NOW_MS)
    assert len(routed.dlq) == 1
    record = orjson.loads(routed.dlq[0])
    assert record["raw"] == bad.decode()
    assert (record["topic"], record["partition"], record["offset"]) == ("reports", 3, 41)
    assert record["reason"] in routed.rejections and sum(routed.rejections.values()) == 1
    assert [offset for _, _, _, offset in routed.records] == [42]  # only the good one's copy
    # a shell reading another partition number may name it in the DLQ record instead
    again = router.route_reports(3, [(41, bad, 1_000)], NOW_MS, dlq_partition=7)
    assert orjson.loads(again.dlq[0])["partition"] == 7


def test_a_report_goes_to_its_owners_partition_and_as_halo_copies_to_the_others():
    regions = regions_of()
    point, bearing = border_site()
    lat, lon = destination(*point, bearing, 30.0)
    owner_region, halo_regions = regions.route(lat, lon)
    owner, others = regions.targets(lat, lon)
    assert others and owner == regions.partition_of(owner_region)
    value = line(report("near", 0, lat, lon))
    router = Router(PARAMS, regions, "reports", "incident-actions")
    routed = router.route_reports(2, [(7, value, 1_234)], NOW_MS)
    assert routed.dlq == []
    assert routed.records == [
        (owner, envelope(REPORT, True, 2, value, -1, 7), 1_234, 7),
        *[(p, envelope(REPORT, False, 2, value, -1, 7), 1_234, 7) for p in others],
    ]
    assert routed.halo_copies == len(others)
    # far from any border (a region's centre): one copy, the owner's
    centre = h3.cell_to_latlng(regions.region_of(*SPOT))
    assert regions.route(*centre)[1] == []
    alone = router.route_reports(2, [(8, line(report("far", 0, *centre)), 1_234)], NOW_MS)
    assert [(p, open_envelope(v)[1]) for p, v, _, _ in alone.records] == [
        (regions.partition_of(regions.region_of(*centre)), True)
    ]
    assert alone.halo_copies == 0


def test_a_batch_carries_the_latest_event_time_routed_from_its_source():
    router = Router(PARAMS, ONE, "reports", "incident-actions")
    nothing = router.route_reports(0, [(0, b"{", 0)], NOW_MS)
    assert nothing.max_ts_ms is None
    routed = router.route_reports(
        0, batch([line(report(f"r{m}", m)) for m in (5, 9, 7)] + [b"{"]), NOW_MS
    )
    assert routed.max_ts_ms == T0_MS + 9 * MINUTE_MS
    router.routed(0, routed, NOW_MS)
    older = router.route_reports(0, batch([line(report("old", 1))], 4), NOW_MS)
    assert older.max_ts_ms == T0_MS + 9 * MINUTE_MS  # the source's, not the batch's
    other = router.route_reports(1, batch([line(report("o", 2))]), NOW_MS)
    assert other.max_ts_ms == T0_MS + 2 * MINUTE_MS  # each source partition its own


def test_marks_say_nothing_routed_until_a_batch_was_then_its_event_time_and_idle_time():
    regions = RegionMap(RESOLUTION, 6, 2000.0, 3)
    router = Router(PARAMS, regions, "reports", "incident-actions")

    def marks(now_ms: int) -> dict[int, set[tuple[int, int, tuple[int, int]]]]:
        by_source: dict[int, set] = {}
        for target, value in router.marks([0, 1], now_ms):
            kind, owner, channel, payload = open_envelope(value)
            assert (kind, owner) == (MARK, False)
            by_source.setdefault(channel, set()).add((target, struct.unpack(">qq", payload)))
        return by_source

    first = marks(NOW_MS)
    assert first == {c: {(p, (-1, 0)) for p in range(3)} for c in (0, 1)}  # to every partition
    routed = router.route_reports(0, batch([line(report("r", 9))]), NOW_MS + 1_000)
    # routed but not yet on its way: a mark must not overtake the reports it vouches for
    assert marks(NOW_MS + 2_000)[0] == {(p, (-1, 2_000)) for p in range(3)}
    router.routed(0, routed, NOW_MS + 3_000)
    after = marks(NOW_MS + 5_500)
    assert after[0] == {(p, (T0_MS + 9 * MINUTE_MS, 2_500)) for p in range(3)}
    assert after[1] == {(p, (-1, 5_500)) for p in range(3)}  # quiet since first marked


# ---------------------------------------------------------------------------- actions


def test_a_bad_action_goes_to_the_actions_dlq_at_the_router_and_nowhere_else():
    router = Router(PARAMS, regions_of(), "reports", "incident-actions")
    for value, name in (
        (b'{"action": "explode", "incident_id": "inc-x"}', "explode"),
        (b"not json", "invalid"),
        (b'{"action": "ack"}', "ack"),  # no incident
    ):
        copies, out = router.route_action(value, 2, 17, NOW_MS)
        assert copies == []
        [record] = dlq(out, actions=True)
        assert record["reason"] == "bad_action" and record["raw"] == value.decode()
        assert (record["topic"], record["partition"], record["offset"]) == (
            "incident-actions",
            2,
            17,
        )
        assert out.outcomes == Counter({f"action:{name}:invalid": 1})


def region_ids() -> list[str]:
    """Incident ids owned by regions on every partition of the routed topic."""
    regions = regions_of()
    ids: dict[int, str] = {}
    rng = random.Random(4)
    while len(ids) < regions.partitions:
        point = destination(*SPOT, rng.uniform(0, 360), rng.uniform(0, 40_000))
        region = regions.region_of(*point)
        ids.setdefault(regions.partition_of(region), incident_id_for("pothole", 0, "f", region))
    return [ids[p] for p in sorted(ids)]


@pytest.mark.parametrize(
    "action,answerer",
    [
        *[({"action": "ack", "incident_id": i, "by": "d"}, p) for p, i in enumerate(region_ids())],
        ({"action": "resolve", "incident_id": "inc-0123456789abcdef"}, 0),  # no region
        ({"action": "block", "reporter": "spammer"}, 0),
    ],
)
def test_an_action_goes_to_every_routed_partition_and_one_copy_answers(action, answerer):
    regions = regions_of()
    shard = shard_of_id(action.get("incident_id", ""))
    if shard is not None:
        assert regions.partition_of(shard) == answerer
    value = orjson.dumps(action)
    router = Router(PARAMS, regions, "reports", "incident-actions")
    copies, out = router.route_action(value, 1, 5, NOW_MS)
    assert out.action_dlq == [] and out.outcomes == Counter()
    assert [p for p, _ in copies] == list(range(regions.partitions))
    assert [open_envelope(v) for _, v in copies] == [
        (ACTION, p == answerer, 1, value) for p in range(regions.partitions)
    ]


def test_an_action_for_an_unknown_incident_is_refused_by_its_owner_alone():
    regions = regions_of()
    router = Router(SCALED_PARAMS, regions, "reports", "incident-actions")
    cores = [RegionCore(SCALED_PARAMS, regions, p, "routed") for p in range(regions.partitions)]
    target = region_ids()[2]
    value = orjson.dumps({"action": "ack", "incident_id": target, "by": "d"})
    copies, _ = router.route_action(value, 0, 3, NOW_MS)
    outs = [
        core.on_routed(batch([routed], 10), NOW_MS)
        for core, (_, routed) in zip(cores, copies, strict=True)
    ]
    for partition, out in enumerate(outs):
        if partition == 2:
            [record] = dlq(out, actions=True)
            assert record["reason"] == "unknown_incident" and record["raw"] == value.decode()
            assert out.outcomes == Counter({"action:ack:unknown_incident": 1})
        else:
            assert out.action_dlq == [] and out.outcomes == Counter() and out.incidents == []


def test_an_ack_changes_the_copy_a_neighbour_holds_but_only_the_owner_emits():
    regions = regions_of()
    cores = scaled_core()
    tagged = tag_partitions(cores)
    cluster = border_cluster()
    feed(cores, [line(r) for r in cluster])
    [(owner, event)] = [(p, e) for p, e in tagged if e.event == "opened"]
    neighbour = next(
        p
        for p in range(regions.partitions)
        if p != owner and event.incident_id in cores.cores[p].detector.incidents
    )
    copy = cores.cores[neighbour].detector.incidents[event.incident_id]
    assert (copy.status, copy.acknowledged_by) == ("open", None)
    value = orjson.dumps({"action": "ack", "incident_id": event.incident_id, "by": "alice"})
    copies, _ = cores.router.route_action(value, 0, 0, None)
    outs = {p: cores.cores[p].on_routed(batch([v], 100), None) for p, v in copies}
    assert [(e.event, e.status) for e in outs[owner].incidents] == [("updated", "acknowledged")]
    assert outs[owner].outcomes == Counter({"action:ack:applied": 1})
    assert (copy.status, copy.acknowledged_by) == ("acknowledged", "alice")
    assert outs[neighbour].incidents == [] and outs[neighbour].outcomes == Counter()
    assert all(out.action_dlq == [] for out in outs.values())
    others = [p for p in outs if p not in (owner, neighbour)]
    assert all(outs[p].incidents == [] and not outs[p].outcomes for p in others)


def test_an_action_routed_again_after_a_router_restart_takes_effect_once():
    """A router that stops before committing routes its last actions again: each routed
    partition applies a source offset once, across a checkpoint and restore too."""
    regions = regions_of()
    cores = scaled_core()
    tagged = tag_partitions(cores)
    feed(cores, [line(r) for r in border_cluster()])
    [(owner, event)] = [(p, e) for p, e in tagged if e.event == "opened"]
    core = cores.cores[owner]
    assign = {"action": "assign", "incident_id": event.incident_id, "by": "d", "to": "crew-1"}
    copies, _ = cores.router.route_action(orjson.dumps(assign), 0, 7, None)
    [value] = [v for p, v in copies if p == owner]
    first = core.on_routed(batch([value], 100), None)
    assert [e.version for e in first.incidents] == [event.version + 1]
    again = core.on_routed(batch([value], 101), None)  # the same source offset, routed again
    assert again.incidents == [] and not again.outcomes and again.action_dlq == []
    assert core.position == 102
    restored = RegionCore(SCALED_PARAMS, regions, owner, "routed")
    restored.restore(decode(encode(core.checkpoint())), NOW_MS)
    late = restored.on_routed(batch([value], 102), None)
    assert late.incidents == [] and not late.outcomes
    assert restored.detector.incidents[event.incident_id].version == event.version + 1


# ---------------------------------------------------------------------------- ownership


def test_a_cluster_straddling_a_border_opens_once_from_its_owners_partition():
    regions = regions_of()
    cluster = border_cluster()
    sides = {regions.region_of(r.lat, r.lon) for r in cluster}
    assert len(sides) == 2 and len({regions.partition_of(s) for s in sides}) == 2
    owner_region = regions.region_of(cluster[0].lat, cluster[0].lon)  # the founder's
    cores = scaled_core()
    tagged = tag_partitions(cores)
    feed(cores, [line(r) for r in cluster])
    found = [(p, e) for p, e in tagged if e.event == "opened"]
    assert len(found) == 1
    partition, event = found[0]
    assert partition == regions.partition_of(owner_region)
    assert event.incident_id.startswith(f"inc-{owner_region}-")
    assert event.report_count == 5 and event.independent_reporters == 5  # both sides counted
    # the other side's detector saw the group too (its halo), and kept it to itself
    other = next(regions.partition_of(s) for s in sides if s != owner_region)
    assert event.incident_id in cores.cores[other].detector.incidents
    # one detector over the whole stream opens the same incident
    events, _ = feed(plain_core(), [line(r) for r in cluster])
    plain = [orjson.loads(e) for e in events if orjson.loads(e)["event"] == "opened"]
    assert same_incidents([event.to_dict()], plain) == []
    assert plain[0]["incident_id"].split("-")[-1] == event.incident_id.split("-")[-1]


# ---------------------------------------------------------------------------- channels


def channel_core() -> RegionCore:
    return RegionCore(PARAMS, ONE, 0, "routed", channels=range(2), now_ms=NOW_MS)


CLUSTER = ring(5, 40, prefix="c")  # 09:00-09:04
AHEAD = report("ahead", 30, 47.70, -122.20)  # 09:30, elsewhere: moves channel 0 on


def test_a_channel_not_heard_from_holds_event_time_until_its_router_marks_it_empty():
    core = channel_core()
    out = core.on_routed(batch(owned([*CLUSTER, AHEAD], channel=0)), NOW_MS)
    assert opened(out.incidents) == []
    assert core.watermark_ms(NOW_MS) < 0  # channel 1 may still send 09:00 reports
    later = NOW_MS + 10 * 3600_000  # hours of wall time: still held (no mark, no report)
    assert opened(core.tick(later).incidents) == []
    assert core.watermark_ms(later) < 0
    out = core.on_routed(batch([mark(1, -1, 0)], 6), later)
    assert len(opened(out.incidents)) == 1
    assert core.watermark_ms(later) == AHEAD.ts_ms - LATENESS_MS


def test_a_channel_not_heard_from_holds_event_time_until_its_router_sends_reports():
    core = channel_core()
    core.on_routed(batch(owned([*CLUSTER, AHEAD], channel=0)), NOW_MS)
    other = report("other", 20, 47.50, -122.40)
    out = core.on_routed(batch(owned([other], channel=1), 6), NOW_MS)
    assert len(opened(out.incidents)) == 1
    assert core.watermark_ms(NOW_MS) == other.ts_ms - LATENESS_MS


def test_a_backlog_on_one_channel_does_not_make_another_channels_reports_late():
    core = channel_core()
    core.on_routed(batch(owned([report("b0", 20, 47.50, -122.40)], channel=1)), NOW_MS)
    busy = [report(f"busy{m}", m, 47.70, -122.20) for m in range(21, 90)]
    core.on_routed(batch(owned(busy, channel=0), 1), NOW_MS)
    out = core.on_routed(batch(owned([report("b1", 25, 47.50, -122.40)], channel=1), 80), NOW_MS)
    assert out.dlq == [] and out.outcomes == Counter(accepted=1)


def test_a_silent_router_holds_event_time_whatever_the_wall_clock_until_its_marks_say_idle():
    core = channel_core()
    core.on_routed(batch(owned([report("b0", 20, 47.50, -122.40)], channel=1)), NOW_MS)
    core.on_routed(
        batch(owned([*CLUSTER, report("ahead", 90, 47.7, -122.2)], channel=0), 1), NOW_MS
    )
    held = T0_MS + 20 * MINUTE_MS - LATENESS_MS
    assert core.watermark_ms(NOW_MS) == held
    later = NOW_MS + 10 * 3600_000
    core.tick(later)
    assert core.watermark_ms(later) == held  # no idle advance from the wall clock
    # channel 1's router: nothing routed since 09:20, quiet for 15 minutes
    core.on_routed(batch([mark(1, T0_MS + 20 * MINUTE_MS, 15 * MINUTE_MS)], 10), later)
    assert core.watermark_ms(later) == T0_MS + 35 * MINUTE_MS - LATENESS_MS
    # it routed up to 09:50 (to other partitions): event time follows
    core.on_routed(batch([mark(1, T0_MS + 50 * MINUTE_MS, 0)], 11), later)
    assert core.watermark_ms(later) == T0_MS + 50 * MINUTE_MS - LATENESS_MS
    # quiet for 30 minutes since: on to 10:20; then a report of 10:25 ends the quiet
    core.on_routed(batch([mark(1, T0_MS + 50 * MINUTE_MS, 30 * MINUTE_MS)], 12), later)
    assert core.watermark_ms(later) == T0_MS + 80 * MINUTE_MS - LATENESS_MS
    out = core.on_routed(batch(owned([report("b2", 85, 47.5, -122.4)], channel=1), 13), later)
    assert out.outcomes == Counter(accepted=1)
    assert core.watermark_ms(later) == T0_MS + 85 * MINUTE_MS - LATENESS_MS


@pytest.mark.parametrize(
    "ahead",
    [
        pytest.param(line(report("future", 30 * 24 * 60)), id="future-timestamp"),
        pytest.param(
            orjson.dumps(
                {
                    "id": "unclassified",
                    "ts": T0_MS + 60 * MINUTE_MS,
                    "lat": 47.6,
                    "lon": -122.3,
                    "reporter": "x",
                    "text": "hello there",
                }
            ),
            id="unclassified",
        ),
    ],
)
def test_a_report_the_core_does_not_accept_does_not_move_event_time_through_marks(ahead):
    now = T0_MS + 90 * MINUTE_MS
    router = Router(PARAMS, ONE, "reports", "incident-actions")
    core = RegionCore(PARAMS, ONE, 0, "routed", channels=[0], now_ms=now)
    routed = router.route_reports(0, [(0, ahead, now)], now)
    router.routed(0, routed, now)
    first = core.on_routed([(0, v, now) for _, v, _, _ in routed.records], now)
    assert first.outcomes["accepted"] == 0  # rejected (future) or unclassified: not accepted
    [(_, value)] = router.marks([0], now + 1_000)
    core.on_routed(batch([value], 1), now + 1_000)
    cluster = [line(r) for r in ring(5, 40, start_minute=2)]
    routed = router.route_reports(0, batch(cluster, 1), now + 2_000)
    out = core.on_routed([(2 + n, v, now) for n, (_, v, _, _) in enumerate(routed.records)], now)
    plain = WorkerCore(PARAMS, "reports")
    plain.assigned([0], now)
    plain.on_reports(0, [(0, ahead, now)], now)
    assert plain.on_reports(0, batch(cluster, 1), now + 2_000).outcomes == Counter(accepted=5)
    assert out.outcomes == Counter(accepted=5), dlq(out)


# ---------------------------------------------------------------------------- halo copies


def test_halo_copies_are_counted_as_halo_never_as_accepted():
    core = RegionCore(PARAMS, ONE, 0, "routed")
    values = halo(ring(3, 40, prefix="h")) + owned(ring(2, 40, prefix="o", start_minute=3))
    out = core.on_routed(batch(values), None)
    assert out.outcomes == Counter(halo=3, accepted=2)
    assert core.totals == Counter(halo=3, accepted=2)


def test_a_rejected_halo_copy_goes_to_no_dlq_its_owner_sends_it():
    core = RegionCore(PARAMS, ONE, 0, "routed")
    core.on_routed(batch(owned([report("ahead", 60)])), None)
    late_copy = halo([report("late-copy", 0, 47.61, -122.33)])
    bad_copy = [envelope(REPORT, False, 0, b'{"id": "bad"}')]
    out = core.on_routed(batch(late_copy + bad_copy, 1), None)
    assert out.dlq == [] and out.rejections == Counter()
    assert "rejected" not in out.outcomes and "halo" not in out.outcomes
    # the same as the owner's copies: to the DLQ
    own = [*owned([report("late-own", 0, 47.61, -122.33)]), envelope(REPORT, True, 0, b"{")]
    out = core.on_routed(batch(own, 3), None)
    assert [r["reason"] for r in dlq(out)] == ["too_late", "invalid_json"]
    assert out.outcomes == Counter(rejected=2)


def surge_stream() -> list[Report]:
    start = T0_MS
    reports = [
        clock_start(start - 3 * HOUR_MS),
        *background(0.3, start - 3 * HOUR_MS, start + HOUR_MS),
        *burst(60, start, 10 * MINUTE_MS, "s"),  # 20 x its background: a surge
    ]
    return sorted(reports, key=lambda r: (r.ts_ms, r.id))


@pytest.mark.parametrize("as_halo", [True, False])
def test_halo_copies_are_not_counted_by_the_surge_detector(as_halo):
    core = RegionCore(PARAMS, ONE, 0, "routed")
    reports = surge_stream()
    wrap = halo if as_halo else owned
    events = core.on_routed(batch(wrap(reports)), None).incidents + core.flush().incidents
    surges = [e for e in opened(events) if e.kind == "surge"]
    if as_halo:
        assert surges == []
        assert core.totals == Counter(halo=len(reports))
    else:  # the same reports as the owner's: a surge (so the halo case above can fail)
        assert len(surges) == 1 and surges[0].category == SURGE_CATEGORY


# ---------------------------------------------------------------------------- internal errors


def failing_on(report_id: str, observe):
    """Detector.observe, raising on one report (patched on the class: a compiled Detector's
    instances take no attributes)."""

    def observe_or_fail(self, report: Report):
        if report.id == report_id:
            raise RuntimeError(f"boom on {report.id}")
        return observe(self, report)

    return observe_or_fail


def test_a_record_whose_processing_raises_goes_to_the_dlq_and_the_stream_goes_on(monkeypatch):
    regions = RegionMap(RESOLUTION, 6, 2000.0, 3)
    partition = regions.partition_of(regions.region_of(*SPOT))  # the one that owns SPOT
    core = RegionCore(PARAMS, regions, partition, "routed")
    monkeypatch.setattr(Detector, "observe", failing_on("c2", Detector.observe))
    members = ring(7, 40, prefix="c")
    first = core.on_routed(batch(owned(members[:5], channel=1)), None)
    [record] = dlq(first)
    assert record["reason"] == INTERNAL_ERROR
    assert record["detail"] == "RuntimeError: boom on c2"
    assert record["raw"] == line(members[2]).decode()  # the report, not the routed envelope
    assert (record["topic"], record["partition"], record["offset"]) == ("routed", partition, 2)
    assert first.outcomes == Counter(accepted=4, rejected=1)
    assert first.rejections == Counter({INTERNAL_ERROR: 1})
    assert core.failures == 1
    assert opened(first.incidents) == []  # four witnesses: not yet
    second = core.on_routed(batch(owned(members[5:], channel=1), 5), None)
    assert second.dlq == [] and second.outcomes == Counter(accepted=2)
    events = second.incidents + core.flush().incidents
    [event] = opened(events)
    # opened by the fifth witness that counts: c2 is in the DLQ, not in the incident
    assert event.report_ids == ("c0", "c1", "c3", "c4", "c5")
    assert event.trigger_report_id == "c5"


def test_a_report_failing_in_every_detector_goes_to_the_dlq_once(monkeypatch):
    point, bearing = border_site()
    lat, lon = destination(*point, bearing, 30.0)
    assert regions_of().targets(lat, lon)[1]  # it has a halo copy
    monkeypatch.setattr(Detector, "observe", failing_on("x", Detector.observe))
    cores = scaled_core()
    out = cores.on_reports(0, batch([line(report("x", 0, lat, lon))]), None)
    assert out.outcomes["rejected"] == 1
    # a replay writes DLQ records at the end, merged by line
    assert [r["reason"] for r in dlq(cores.flush())] == [INTERNAL_ERROR]


# ---------------------------------------------------------------------------- budget, config


@pytest.mark.parametrize("category", DetectorParams().taxonomy.names)
def test_each_shard_gets_its_share_of_the_chance_incident_budget(category):
    whole = DetectorParams().significance_of(category)
    quarter = DetectorParams(shards=4).significance_of(category)
    assert quarter[0] == whole[0]
    assert quarter[1] == pytest.approx(whole[1] / 4)
    own = SignificanceParams(max_false_per_day=2.0)
    from geoincident.detectors.params import CategoryParams

    categories = {category: CategoryParams(significance=own)}
    assert DetectorParams(categories=categories, shards=4).significance_of(category)[1] == 0.5


def described(regions: RegionMap | None) -> tuple:
    assert regions is not None
    return (regions.resolution, regions.cell_resolution, regions.halo_m, regions.partitions)


def test_a_region_resolution_above_the_surge_resolution_fails_naming_the_key(tmp_path):
    path = tmp_path / "geoincident.toml"
    path.write_text("[scale]\nregion_resolution = 7\n")
    with pytest.raises(ConfigError, match=r"scale\.region_resolution"):
        load(path)  # the surge's region resolution is 6: refused at load
    path.write_text("[scale]\nregion_resolution = 7\n[surge]\nregion_resolution = 8\n")
    assert described(load(path).region_map()) == (7, 8, halo_m_for(DetectorParams()), 4)


def test_scale_settings_give_the_routed_topic_and_the_detectors_share():
    plain = Settings()
    assert not plain.scaled_out and plain.region_map() is None
    assert "geoincident-routed" not in plain.topic_partitions()
    params = plain.detector_params()
    assert (params.shard_resolution, params.shards) == (None, 1)

    own = Settings(scale=ScaleConfig(region_resolution=5, partitions=8, halo_m=750.0))
    partitions = own.topic_partitions()
    assert partitions["geoincident-routed"] == 8
    assert partitions["reports"] == partitions["incidents"] == 4
    params = own.detector_params()
    assert (params.shard_resolution, params.shards) == (5, 8)
    assert described(own.region_map()) == (5, 6, 750.0, 8)

    inherited = Settings(
        scale=ScaleConfig(region_resolution=4), topics=TopicsConfig(partitions=6, routed="r")
    )
    assert inherited.topic_partitions()["r"] == 6
    assert inherited.detector_params().shards == 6
    assert described(inherited.region_map()) == (4, 6, halo_m_for(params), 6)
    assert halo_m_for(params) == 2 * 250.0 + 1.5 * 1000.0


# ---------------------------------------------------------------------------- replay


def sparse_city(seed: int, fraction: float) -> list[bytes]:
    values, _ = city_stream(seed, T0_MS)
    rng = random.Random(seed)
    return [v for v in values if not v.startswith(b'{"id":"bg-') or rng.random() < fraction]


def opened_dicts(events: list[bytes]) -> list[dict]:
    return [e for e in map(orjson.loads, events) if e["event"] == "opened"]


@settings(max_examples=10, deadline=None, database=None)
@given(
    seed=st.integers(0, 10_000),
    fraction=st.floats(0.0, 0.3),
    cuts=st.lists(st.integers(1, 1_500), max_size=12),
)
def test_routed_cores_replay_one_detectors_incidents_the_same_every_time(seed, fraction, cuts):
    values = sparse_city(seed, fraction)
    plain, _ = feed(plain_core(), values)
    scaled, scaled_dlq = feed(scaled_core(), values)
    assert same_incidents(opened_dicts(scaled), opened_dicts(plain)) == []
    hashes = sorted(e["incident_id"].split("-")[-1] for e in opened_dicts(plain))
    assert sorted(e["incident_id"].split("-")[-1] for e in opened_dicts(scaled)) == hashes
    again, again_dlq = feed(scaled_core(), values)
    assert again == scaled and again_dlq == scaled_dlq  # byte for byte
    cut, cut_dlq = feed(scaled_core(), values, cuts)
    assert sorted(cut) == sorted(scaled) and sorted(cut_dlq) == sorted(scaled_dlq)


def test_routed_cores_replay_the_same_bytes_whatever_the_batch_cuts():
    values = sparse_city(0, 0.25)
    whole, _ = feed(scaled_core(), values)
    cut, _ = feed(scaled_core(), values, list(range(100, len(values), 100)))
    assert cut == whole


def test_a_scaled_replay_judges_late_reports_as_one_detector_does():
    regions = regions_of()
    cluster = ring(5, 40, centre=h3.cell_to_latlng(regions.region_of(*SPOT)))  # no halo
    used = {p for r in cluster for p in (regions.targets(r.lat, r.lon)[0],)}
    rng = random.Random(1)
    while True:  # a place on another partition, far from any border
        far = destination(*SPOT, rng.uniform(0, 360), rng.uniform(5_000, 40_000))
        owner, others = regions.targets(*far)
        if owner not in used and not others:
            break
    ahead = report("ahead", 60, *far)  # an hour after the cluster, elsewhere
    values = [line(ahead)] + [line(r) for r in cluster]
    found = replay_both(values)
    plain_events, plain_dlq = found["plain"]
    scaled_events, scaled_dlq = found["scaled"]
    assert [r["reason"] for r in plain_dlq] == ["too_late"] * 5
    assert [r["reason"] for r in scaled_dlq] == ["too_late"] * 5
    assert [e for e in scaled_events if e["event"] == "opened"] == []


def test_a_scaled_replay_writes_one_detectors_dlq_records():
    regions = regions_of()
    rng = random.Random(6)
    while True:  # a place whose region is not on partition 0
        place = destination(*SPOT, rng.uniform(0, 360), rng.uniform(5_000, 30_000))
        if regions.targets(*place)[0] != 0:
            break
    values = [b'{"id": "bad"', line(report("ahead", 60, *place)), line(report("old", 0, *place))]
    found = replay_both(values)
    plain_dlq, scaled_dlq = found["plain"][1], found["scaled"][1]
    assert [(r["reason"], r["partition"], r["offset"]) for r in plain_dlq] == [
        (plain_dlq[0]["reason"], None, 0),
        ("too_late", None, 2),
    ]
    assert scaled_dlq == plain_dlq


def test_replay_with_scale_runs_routed_cores():
    """The `geoincident replay` path: a stream with a cluster on a border and a malformed line
    gives one detector's incidents with [scale] set."""
    cluster = [line(r) for r in border_cluster("z")]
    found = replay_both([b"{", *cluster])
    plain = [e for e in found["plain"][0] if e["event"] == "opened"]
    scaled = [e for e in found["scaled"][0] if e["event"] == "opened"]
    assert len(plain) == 1 and same_incidents(scaled, plain) == []
    assert shard_of_id(scaled[0]["incident_id"]) is not None
    assert shard_of_id(plain[0]["incident_id"]) is None
    assert [r["reason"] for r in found["scaled"][1]] == [r["reason"] for r in found["plain"][1]]


def test_the_unsharded_core_emits_what_it_is_told_it_owns():
    """`owns` (what RegionCore hands WorkerCore) filters every event, opened ones included."""
    values = [line(r) for r in ring(5, 40)]
    kept = WorkerCore(PARAMS, "reports", source_is_file=True, owns=lambda incident_id: False)
    events, _ = feed(kept, values)
    assert events == [] and len(kept.detector.incidents) == 1
    events, _ = feed(WorkerCore(PARAMS, "reports", source_is_file=True), values)
    assert len(opened_dicts(events)) == 1


def test_a_null_value_on_the_routed_topic_is_skipped():
    core = RegionCore(PARAMS, ONE, 0, "routed")
    out = core.on_routed([(0, None, 0), *batch(owned([report("good", 0)]))[0:]], None)
    assert out.outcomes == Counter(accepted=1)


def test_a_dlq_record_of_a_routed_report_names_where_it_came_from():
    """The router puts the source offset in the envelope: a report the detector refuses (here
    too late) is named by the reports topic, its partition and offset, as without [scale]."""
    router = Router(PARAMS, ONE, "reports", "incident-actions")
    core = RegionCore(PARAMS, ONE, 0, "routed", source_topic="reports")
    ahead, old = report("ahead", 60), report("old", 0)
    routed = router.route_reports(3, [(40, line(ahead), 0), (41, line(old), 0)], None)
    out = core.on_routed([(n, value, 0) for n, (_, value, _, _) in enumerate(routed.records)], None)
    [record] = dlq(out)
    assert record["reason"] == "too_late"
    assert (record["topic"], record["partition"], record["offset"]) == ("reports", 3, 41)
