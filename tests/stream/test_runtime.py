"""The worker's shell around the detector, without Kafka: watermarks across partitions."""

import orjson

from geoincident.detectors import DetectorParams
from geoincident.stream.runtime import WorkerCore
from tests.builders import MINUTE_MS, T0_MS, line, report, ring

NOW_MS = T0_MS + 24 * 60 * MINUTE_MS


def _records(reports, start_offset=0):
    return [(start_offset + n, line(r), NOW_MS) for n, r in enumerate(reports)]


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


def test_a_partition_taken_away_no_longer_holds_event_time_back():
    # Without idle advance a partition's event time moves only with its reports: one given
    # to another worker would freeze the watermark for good if it still counted here.
    core = WorkerCore(DetectorParams(), "reports", idle_advance=False)
    core.assigned([0, 1], NOW_MS)
    core.on_reports(1, _records([report("old", 0, 47.7, -122.2)]), NOW_MS)
    core.on_reports(0, _records(ring(5, 40)), NOW_MS)
    held = core.watermark_ms(NOW_MS)
    assert held == T0_MS - 120_000  # partition 1's first report, less the lateness bound
    core.assigned([0], NOW_MS + 1_000)  # the rebalance gave partition 1 to another worker
    assert core.checkpoint()["partitions"][1]["next_offset"] == 1  # known for its return
    later = core.on_reports(0, _records([report("later", 30, 47.5, -122.1)], 5), NOW_MS + 2_000)
    assert core.watermark_ms(NOW_MS + 2_000) == T0_MS + 28 * MINUTE_MS
    assert [e.event for e in later.incidents] == ["opened"]


def _action(offset: int, incident_id: str, to: str) -> bytes:
    return orjson.dumps(
        {
            "action_id": f"a{offset}",
            "incident_id": incident_id,
            "action": "assign",
            "to": to,
            "by": "dispatcher-1",
            "at": "2026-11-24T09:20:00.000Z",
        }
    )


def test_an_action_read_again_after_a_restart_takes_effect_once():
    # The group's committed offset can lag the checkpoint: after a crash the actions topic is
    # read again from there. The checkpoint knows which offsets it holds.
    core = WorkerCore(DetectorParams(), "reports")
    core.assigned([0], NOW_MS)
    opened = core.on_reports(0, _records(ring(5, 40)), NOW_MS).incidents
    opened += core.tick(NOW_MS + 121_000).incidents
    incident_id = opened[0].incident_id
    applied = core.on_action(_action(0, incident_id, "crew-7"), 0, 0, NOW_MS)
    assert [e.assigned_to for e in applied.incidents] == ["crew-7"]
    version = core.detector.incidents[incident_id].version
    checkpoint = core.checkpoint()
    assert checkpoint["actions"] == {0: 1}

    restarted = WorkerCore(DetectorParams(), "reports")
    restarted.restore(checkpoint, NOW_MS)
    again = restarted.on_action(_action(0, incident_id, "crew-7"), 0, 0, NOW_MS)
    assert again.incidents == [] and again.outcomes == {}
    incident = restarted.detector.incidents[incident_id]
    assert incident.version == version and len(incident.history) == 1
    following = restarted.on_action(_action(1, incident_id, "crew-8"), 0, 1, NOW_MS)
    assert [e.assigned_to for e in following.incidents] == ["crew-8"]


def test_an_action_at_the_edge_of_time_goes_to_the_dlq_not_into_a_crash_loop(monkeypatch):
    """`at` 0001-01-01T00:00:00+23:59 is year 0 in UTC: it used to raise OverflowError while
    the event was written, out of the core, so the worker exited and the restart met the same
    action again. It is refused as `bad_action`; and an action whose application raises
    anyway goes to the DLQ as `internal_error` while the next one is applied."""
    from geoincident.stream.runtime import WorkerCore

    core = WorkerCore(DetectorParams(), "reports")
    edge = b'{"incident_id":"inc-0","action":"ack","by":"d1","at":"0001-01-01T00:00:00+23:59"}'
    out = core.on_action(edge, 0, 0, 1_764_000_000_000)
    assert [orjson.loads(r)["reason"] for r in out.action_dlq] == ["bad_action"]

    def boom(self, action):
        raise OverflowError("date value out of range")

    # on the class: a compiled Detector's instances take no attributes
    monkeypatch.setattr(type(core.detector), "apply_action", boom)
    out = core.on_action(
        b'{"incident_id":"inc-0","action":"ack","by":"d1"}', 0, 1, 1_764_000_000_000
    )
    (record,) = [orjson.loads(r) for r in out.action_dlq]
    assert record["reason"] == "internal_error"
    assert "OverflowError" in record["detail"]
    assert core.action_offsets[0] == 2
