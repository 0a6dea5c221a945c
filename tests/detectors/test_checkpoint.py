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
