"""Any partitioning, interleaving and batch cuts give replay's events, byte for byte.

The worker feeds `WorkerCore` per Kafka partition, in offset order, in batches the broker cuts;
`geoincident replay` feeds the same core one partition in batches of 1024 lines. As long as no
report is late (each arrives at most `allowed_lateness` of event time after the highest event
time already arrived), how the stream was spread over partitions, how the partitions' batches
interleave and where the batches are cut must change nothing: not the incident events, not
the DLQ records (bar their partition and offset), not the outcome totals.

How the partitions become known to the core. The worker's `_on_assigned` (stream/app.py)
calls `core.assigned(partitions, now)` when the group hands it its partitions, before any
record of them is fetched; so each partition is in `core.partitions`, with no event time yet,
before the first batch, and `_lowest_other` holds the watermark back until every one of them
has delivered a report. Live, a partition still silent after `empty_partition_hold_ms` of wall
time is left out; without a wall clock (`now_ms=None`, as here and in a replay) it holds until
`flush`, so a partition that gets no report defers all processing to the end of the input,
which must give the same events too. This test registers every partition up front, as the
worker does. It has to: the partitions' batches interleave freely, so one partition may be
read far ahead of the others (a backlog), and the watermark is safe only as the minimum over
every partition. Each partition's delivered records all arrived before the record at hand in
the original order, so the slowest partition's highest event time is at most the highest
event time arrived before it, and no on-time report falls behind the watermark. A partition
the core has not heard of counts for nothing: left unregistered, the first partition's batch
alone moves the watermark and the others' older reports become late (tried: it fails).

"At most" includes the bound itself: a report exactly `allowed_lateness` behind the highest
event time is on time (`ts >= watermark`). The last test pins that case; the property draws
it too (pacers, one-instant incidents), less often.
"""

from __future__ import annotations

import itertools
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from geoincident.detectors import DetectorParams, Report
from geoincident.geo import destination
from geoincident.stream.replay import replay, replay_core
from geoincident.stream.runtime import WorkerCore
from tests.builders import MINUTE_MS, SPOT, T0_MS, line, report, ring

PARAMS = DetectorParams()
LATENESS_MS = PARAMS.allowed_lateness_ms
# Event times and arrival delays sit on a 15 s grid, so equal event times, timers due exactly
# at a report's time and reports exactly at the lateness bound all happen often.
GRID_MS = 15_000
# Incidents far enough apart (2.5 km from SPOT, 120 degrees apart) to stay independent.
CENTRES = [destination(*SPOT, bearing, 2500.0) for bearing in (0.0, 120.0, 240.0)]
# Background reports move event time on, past the first incident's quiet resolution.
LAST_MINUTE = 85
TAIL_MINUTES = (70, 75, 80, LAST_MINUTE)


def _wire_with_ts(r: Report, ts: int) -> bytes:
    body = orjson.loads(line(r))
    body["ts"] = ts
    return orjson.dumps(body)


# Lines no report comes out of: the DLQ (and one `unclassified` outcome) must match replay's.
JUNK = (
    b"{bad",
    _wire_with_ts(report("epoch-one", 0), 1),  # ts 1: bad_timestamp
    line(report("nowhere", 0, lat=0.0, lon=0.0)),  # bad_coordinates
    line(report("no-such-kind", 0, category="zzz_unknown")),  # unclassified
)


@st.composite
def streams(draw) -> list[tuple[bytes, int | None]]:
    """(line, event time or None) in arrival order: incidents, background, duplicates, junk.

    Arrival = event time + a delay of at most the lateness bound, ties broken by a drawn
    priority; so every report arrives no later than `allowed_lateness` after any report
    that arrived before it, and nothing is late.
    """
    reports: list[Report] = []
    for k in range(draw(st.integers(2, 3))):
        # the first incident ends by minute 16: quiet for an hour by LAST_MINUTE
        start_quarters = draw(st.integers(0, 40)) if k == 0 else draw(st.integers(40, 160))
        reports += ring(
            draw(st.integers(5, 7)),
            draw(st.sampled_from([15.0, 30.0, 45.0])),
            centre=CENTRES[k],
            start_minute=start_quarters / 4,
            # 0: every member at one event time, so the (time, id) order among them decides
            # which five open the incident and which one only updates it
            step_minutes=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
            prefix=f"i{k}-",
            category=draw(st.sampled_from(["streetlight_out", "pothole"])),
        )
    members = [r.ts_ms for r in reports]
    background = draw(
        st.lists(
            st.tuples(
                st.integers(0, LAST_MINUTE * 4),  # quarter minutes
                st.integers(0, 359),
                st.integers(4000, 9000),
            ),
            min_size=10,
            max_size=25,
        )
    )
    for n, (quarter, bearing, distance) in enumerate(background):
        reports.append(report(f"bg{n}", quarter / 4, *destination(*SPOT, bearing, distance)))
    # pacers: a report exactly the lateness bound after an incident member, so that member
    # can arrive right at the bound (a delay of `allowed_lateness`, after the pacer)
    for n, ts in enumerate(draw(st.lists(st.sampled_from(members), min_size=1, max_size=3))):
        minute = (ts + LATENESS_MS - T0_MS) / MINUTE_MS
        reports.append(report(f"pace{n}", minute, *destination(*SPOT, 30.0 * n, 7000.0)))
    for n, minute in enumerate(TAIL_MINUTES):
        reports.append(report(f"tail{n}", minute, *destination(*SPOT, 90.0 * n + 45, 6000.0)))
    assert all(r.ts_ms % GRID_MS == 0 for r in reports)

    # duplicates: the same line again, arriving on its own delay (so maybe on another partition)
    copies = draw(st.lists(st.integers(0, len(reports) - 1), max_size=3))
    entries: list[tuple[bytes, int | None]] = [(line(r), r.ts_ms) for r in reports]
    entries += [entries[i] for i in copies]
    steps = LATENESS_MS // GRID_MS
    delay_steps = st.one_of(st.sampled_from([0, steps]), st.integers(0, steps))  # bounds likely
    delays = draw(st.lists(delay_steps, min_size=len(entries), max_size=len(entries)))
    ties = draw(st.lists(st.integers(0, 3), min_size=len(entries), max_size=len(entries)))
    keyed = [
        (ts + delay * GRID_MS, tie, n, raw, ts)
        for n, ((raw, ts), delay, tie) in enumerate(zip(entries, delays, ties, strict=True))
    ]
    # junk arrives anywhere (it has no event time); "{bad" possibly twice
    junk = list(JUNK) + draw(st.lists(st.just(JUNK[0]), max_size=1))
    span = (LAST_MINUTE * MINUTE_MS) // GRID_MS
    for n, raw in enumerate(junk):
        at = T0_MS + draw(st.integers(0, span)) * GRID_MS
        keyed.append((at, draw(st.integers(0, 3)), len(entries) + n, raw, None))
    keyed.sort(key=lambda item: item[:3])
    return [(raw, ts) for _, _, _, raw, ts in keyed]


def _assert_nothing_late(stream: list[tuple[bytes, int | None]]) -> None:
    highest = None
    for _, ts in stream:
        if ts is None:
            continue
        assert highest is None or ts >= highest - LATENESS_MS
        highest = ts if highest is None else max(highest, ts)


def _dlq_multiset(records: list[bytes]) -> Counter[tuple[str, str]]:
    decoded = (orjson.loads(record) for record in records)
    return Counter((d["reason"], d["raw"]) for d in decoded)


def _replayed(lines: list[bytes]) -> tuple[list[bytes], Counter, Counter]:
    """What `geoincident replay` makes of the stream in its arrival order."""
    core = replay_core(PARAMS, "reports")
    events: list[bytes] = []
    dlq: list[bytes] = []
    replay(lines, core, lambda event: events.append(event.to_json()), dlq.append)
    return events, _dlq_multiset(dlq), core.totals


def _partitioned(
    lines: list[bytes],
    assignment: list[int],
    partitions: int,
    next_batch,
) -> tuple[list[bytes], Counter, Counter]:
    """The worker's way: each partition in its own offset order, the partitions' batches
    interleaved as `next_batch(ready, left)` -> (partition, size) picks, no wall clock."""
    core: WorkerCore = replay_core(PARAMS, "reports")
    core.assigned(range(partitions), 0)  # the rebalance callback, before any fetch
    queues: list[list[tuple[int, bytes, int]]] = [[] for _ in range(partitions)]
    for raw, partition in zip(lines, assignment, strict=True):
        queue = queues[partition]
        queue.append((len(queue), raw, 0))
    read = [0] * partitions
    events: list[bytes] = []
    dlq: list[bytes] = []
    while ready := [p for p in range(partitions) if read[p] < len(queues[p])]:
        partition, size = next_batch(ready, [len(queues[p]) - read[p] for p in ready])
        batch = queues[partition][read[partition] : read[partition] + size]
        read[partition] += size
        out = core.on_reports(partition, batch, None)
        events += [event.to_json() for event in out.incidents]
        dlq += out.dlq
    events += [event.to_json() for event in core.flush().incidents]
    return events, _dlq_multiset(dlq), core.totals


@settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # no `explain` phase: its line tracing makes shrinking a failure take minutes, past
    # pytest's timeout
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(stream=streams(), data=st.data())
def test_any_partitioning_interleaving_and_batch_cuts_give_replays_output(stream, data):
    _assert_nothing_late(stream)
    lines = [raw for raw, _ in stream]
    expected_events, expected_dlq, expected_totals = _replayed(lines)
    assert expected_events, "replay produced no incident event: the property would be vacuous"
    assert sum(expected_dlq.values()) >= 3  # "{bad", ts 1, lat/lon 0

    partitions = data.draw(st.sampled_from([1, 2, 4, 8]), label="partitions")
    assignment = data.draw(
        st.lists(st.integers(0, partitions - 1), min_size=len(lines), max_size=len(lines)),
        label="assignment",
    )
    cap = data.draw(st.sampled_from([1, 2, 5, len(lines)]), label="batch cap")

    def next_batch(ready: list[int], left: list[int]) -> tuple[int, int]:
        k = data.draw(st.integers(0, len(ready) - 1))
        return ready[k], data.draw(st.integers(1, min(cap, left[k])))

    events, dlq, totals = _partitioned(lines, assignment, partitions, next_batch)
    event(f"{partitions} partitions, {len(set(assignment))} fed")
    for kind in (b'"event":"resolved"', b'"event":"updated"'):
        event(f"replay has {kind.decode()}: {any(kind in e for e in expected_events)}")
    assert events == expected_events
    assert dlq == expected_dlq
    assert totals == expected_totals


def test_eight_partitions_one_record_a_batch_open_and_resolve_like_replay():
    """Deterministic and non-vacuous: two incidents open, the first resolves quietly."""
    reports = ring(5, 30.0, centre=CENTRES[0], prefix="a")  # minutes 0-4
    reports += ring(6, 30.0, centre=CENTRES[1], start_minute=30, step_minutes=0.5, prefix="b")
    reports += [
        report(f"bg{n}", minute, *destination(*SPOT, 37.0 * n, 5000.0 + 150.0 * n))
        for n, minute in enumerate(range(0, LAST_MINUTE + 1, 5))
    ]
    reports.sort(key=lambda r: (r.ts_ms, r.id))
    # arrival: every third report a minute late (within the two-minute bound)
    stream = sorted(
        ((r.ts_ms + (MINUTE_MS if n % 3 == 0 else 0), n, line(r), r.ts_ms))
        for n, r in enumerate(reports)
    )
    arrived = [(raw, ts) for _, _, raw, ts in stream]
    arrived[10:10] = [arrived[9], (JUNK[0], None), (JUNK[1], None)]  # a duplicate, junk
    _assert_nothing_late(arrived)
    lines = [raw for raw, _ in arrived]

    expected_events, expected_dlq, expected_totals = _replayed(lines)
    kinds = [orjson.loads(event)["event"] for event in expected_events]
    assert kinds.count("opened") == 2 and "resolved" in kinds, kinds
    assert expected_totals["duplicate"] == 1 and expected_totals["rejected"] == 2

    turn = itertools.count()

    def round_robin(ready: list[int], left: list[int]) -> tuple[int, int]:
        return ready[next(turn) % len(ready)], 1

    assignment = [n % 8 for n in range(len(lines))]
    events, dlq, totals = _partitioned(lines, assignment, 8, round_robin)
    assert events == expected_events
    assert dlq == expected_dlq
    assert totals == expected_totals


@pytest.mark.parametrize(
    ("partitions", "assignment", "batches"),
    [
        # one partition: the batch ends with `far`, which moves the watermark onto r0's time
        (1, [0] * 7, [(0, 6), (0, 1)]),
        # two partitions, both read past r0's time plus the bound before r0 comes
        (2, [0] * 6 + [1, 1], [(0, 6), (1, 1), (1, 1)]),
    ],
)
def test_a_report_exactly_at_the_lateness_bound_is_ordered_like_replay(
    partitions, assignment, batches
):
    """The boundary of "within the lateness bound": r0 arrives exactly `allowed_lateness`
    after the highest event time, so it is on time (`ts >= watermark`) and waits. Replay
    (one batch) processes r0..r5 in (event time, id) order: r0..r4 open the incident, r5
    updates it. Cut after `far`, a drain at that very watermark has already processed what is
    at `ts <= watermark`, r1..r5; if r0 then comes after them, the incident opens with r1..r5
    instead, and r0 only updates it."""
    same = ring(6, 30.0, step_minutes=0.0)  # r0..r5 at one event time: the first five open
    far = [report("far", 2, *destination(*SPOT, 90.0, 6000.0))]  # the lateness bound later
    if partitions == 2:
        far.append(report("far2", 2, *destination(*SPOT, 270.0, 6000.0)))
    arrived = [*same[1:], *far, same[0]]
    _assert_nothing_late([(line(r), r.ts_ms) for r in arrived])
    lines = [line(r) for r in arrived]

    expected_events, expected_dlq, expected_totals = _replayed(lines)
    opened = orjson.loads(expected_events[0])
    assert opened["event"] == "opened"
    assert opened["report_ids"] == ["r0", "r1", "r2", "r3", "r4"]

    script = iter(batches)

    def scripted(ready: list[int], left: list[int]) -> tuple[int, int]:
        return next(script)

    events, dlq, totals = _partitioned(lines, assignment, partitions, scripted)
    assert events == expected_events
    assert dlq == expected_dlq
    assert totals == expected_totals
