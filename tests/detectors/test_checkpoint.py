"""A detector restored from a checkpoint and refilled from the input carries on as if it had
never stopped."""

import pickle
import random

import pytest

from geoincident.detectors import Detector
from geoincident.geo import destination
from tests.builders import SPOT, report, ring


def _stream(seed: int) -> list:
    rng = random.Random(seed)
    reports = []
    for k, start in enumerate((5, 20, 50, 80)):
        centre = destination(*SPOT, 90.0 * k, 2000.0)
        count = rng.randint(6, 12)
        reports += ring(
            count, 50, centre=centre, start_minute=start, step_minutes=1.5, prefix=f"i{k}-"
        )
    for n in range(300):
        lat, lon = destination(*SPOT, rng.uniform(0, 360), rng.uniform(0, 6000))
        reports.append(report(f"bg{n}", rng.uniform(0, 150), lat, lon))
    return sorted(reports, key=lambda r: (r.ts_ms, r.id))


@pytest.mark.parametrize("cut_fraction", [0.1, 0.3, 0.45, 0.6])
def test_restore_and_rebuild_continue_byte_identically(cut_fraction):
    reports = _stream(3)
    cut = int(len(reports) * cut_fraction)
    whole = Detector()
    before = whole.observe_many(reports[:cut])
    after = whole.observe_many(reports[cut:]) + whole.flush()

    first = Detector()
    assert [e.to_json() for e in first.observe_many(reports[:cut])] == [e.to_json() for e in before]
    checkpoint = pickle.dumps(first.snapshot())

    second = Detector()
    second.restore(pickle.loads(checkpoint))
    second.rebuild(reports[:cut])  # the worker reads these again from the input topic
    resumed = second.observe_many(reports[cut:]) + second.flush()
    assert [e.to_json() for e in resumed] == [e.to_json() for e in after]
    assert second.counts == whole.counts
    assert any(e.event == "opened" for e in after)


def test_a_report_read_twice_in_the_rebuild_counts_once():
    """At least once: the input can hold a report twice; the rebuilt window must not."""
    reports = _stream(3)
    cut = int(len(reports) * 0.45)
    whole = Detector()
    whole.observe_many(reports[:cut])
    after = whole.observe_many(reports[cut:]) + whole.flush()

    first = Detector()
    first.observe_many(reports[:cut])
    blob = pickle.dumps(first.snapshot())
    once = Detector()
    once.restore(pickle.loads(blob))
    once.rebuild(reports[:cut])
    second = Detector()
    second.restore(pickle.loads(blob))
    second.rebuild(reports[:cut] + reports[:cut])  # every record re-read twice
    assert second.state_reports == once.state_reports
    assert second.surge.state_reports == once.surge.state_reports
    resumed = second.observe_many(reports[cut:]) + second.flush()
    assert [e.to_json() for e in resumed] == [e.to_json() for e in after]


def test_a_report_that_counted_before_a_block_counts_again_after_a_restart():
    # mallory reports, then is blocked; four others join her report: with her report counted
    # (it was processed before the block) that is five, an incident. A restart in between
    # must rebuild her report with the weight it had, not with today's block list.
    first_part = [report("m", 0, reporter="mallory")]
    first_part += [report(f"p{n}", 3 + n, reporter=f"early{n}") for n in range(2)]
    later = [report(f"q{n}", 6 + n, reporter=f"late{n}") for n in range(2)]
    later.append(report("tick", 20, *destination(*SPOT, 0.0, 5000.0)))

    def run(restart: bool) -> list[bytes]:
        detector = Detector()
        events = detector.observe_many(first_part)
        events += detector.advance(first_part[-1].ts_ms)  # processed up to here
        detector.block(reporter="mallory")
        if restart:
            checkpoint = pickle.dumps(detector.snapshot())
            detector = Detector()
            detector.restore(pickle.loads(checkpoint))
            detector.rebuild(first_part)
        events += detector.observe_many(later) + detector.flush()
        return [event.to_json() for event in events]

    uninterrupted = run(restart=False)
    assert any(b'"opened"' in line for line in uninterrupted)
    assert run(restart=True) == uninterrupted
