"""The worker's shell around the detector, without Kafka: watermarks across partitions."""

import orjson

from geoincident.detectors import DetectorParams
from geoincident.stream.runtime import WorkerCore
from tests.builders import MINUTE_MS, T0_MS, report, ring

NOW_MS = T0_MS + 24 * 60 * MINUTE_MS


def _value(r) -> bytes:
    return orjson.dumps(
        {
            "id": r.id,
            "ts": r.ts_ms,
            "lat": r.lat,
            "lon": r.lon,
            "reporter": r.reporter,
            "category": r.category,
        }
    )


def _records(reports, start_offset=0):
    return [(start_offset + n, _value(r), NOW_MS) for n, r in enumerate(reports)]


def test_a_backlog_on_one_partition_does_not_make_the_other_too_late():
    core = WorkerCore(DetectorParams(), "reports")
    core.assigned([0, 1], NOW_MS)
    late_half = ring(5, 40, prefix="a")  # 09:00-09:04
    busy = [report(f"b{n}", 10 + n, 47.7, -122.2) for n in range(120)]  # two hours later
    first = core.on_reports(1, _records(busy), NOW_MS)
    second = core.on_reports(0, _records(late_half), NOW_MS + 500)
    rejected = first.rejections + second.rejections
    assert rejected == {}, rejected
    assert core.totals["accepted"] == 125
    out = core.tick(NOW_MS + 500 + 121_000)  # partition 0 idle for the lateness bound
    opened = [e for e in first.incidents + second.incidents + out.incidents if e.event == "opened"]
    assert len(opened) == 1


def test_a_silent_partition_holds_event_time_only_for_a_while():
    core = WorkerCore(DetectorParams(), "reports")
    core.assigned([0, 1], NOW_MS)
    core.on_reports(0, _records(ring(5, 40)), NOW_MS)
    assert core.watermark_ms(NOW_MS + 1_000) < 0  # partition 1 may still bring older reports
    later = NOW_MS + core.empty_partition_hold_ms + 1
    assert core.watermark_ms(later) > T0_MS
    assert [e.event for e in core.tick(later).incidents] == ["opened"]


def test_offset_marks_stay_one_per_second_of_event_time_and_rebuild_from_early_enough():
    """Tiny batches (a low-latency fetch) must not grow the checkpoint: batches within one
    second of event time share a mark, and the rebuild offset never skips a needed record."""
    from geoincident.stream.runtime import PartitionClock

    clock = PartitionClock()
    offset = 0
    for ts_ms in range(0, 60_000, 5):  # a 5 ms batch of two records, for a minute
        clock.mark(offset, ts_ms)
        offset += 2
    assert len(clock.marks) == 60
    # the first record of event time >= 30 s is at offset 2 * 6000; rebuilding from the mark
    # must start at or before it
    assert clock.rebuild_offset(30_000) <= 2 * 6000
    assert clock.rebuild_offset(30_000) >= 2 * 5800  # and not from far earlier


def test_a_late_report_that_opens_an_incident_has_its_detection_latency_measured():
    """A late report is processed inside observe: its arrival must already be known, or the
    detection latency metric silently misses the incident."""
    core = WorkerCore(DetectorParams(allowed_lateness_s=0.0), "reports")
    core.assigned([0], NOW_MS)
    members = ring(5, 40, prefix="a")  # 09:00-09:04, five independent reporters
    ahead = [report("z", 10, 40.0, -100.0)]  # far away, minutes later: the rest is late
    core.on_reports(0, _records(ahead), NOW_MS)
    out = core.on_reports(0, _records(members, start_offset=1), NOW_MS + 250)
    opened = [e for e in out.incidents if e.event == "opened"]
    assert len(opened) == 1 and opened[0].trigger_report_id == members[-1].id
    assert out.latencies_s == [0.25]
