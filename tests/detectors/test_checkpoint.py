"""A detector restored from a checkpoint and refilled from the input carries on as if it had
never stopped."""

import random

import pytest

from geoincident.geo import destination
from tests.builders import SPOT, Driven, report, ring


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
    whole = Driven()
    before = whole.feed(reports[:cut])
    after = whole.feed(reports[cut:]) + whole.flush()

    first = Driven()
    assert [e.to_json() for e in first.feed(reports[:cut])] == [e.to_json() for e in before]
    second = first.restart(reports[:cut])  # the worker reads these again from the input topic
    resumed = second.feed(reports[cut:]) + second.flush()
    assert [e.to_json() for e in resumed] == [e.to_json() for e in after]
    assert second.detector.counts == whole.detector.counts
    assert any(e.event == "opened" for e in after)


def test_a_report_read_twice_in_the_rebuild_counts_once():
    """At least once: the input can hold a report twice; the rebuilt window must not."""
    reports = _stream(3)
    cut = int(len(reports) * 0.45)
    whole = Driven()
    whole.feed(reports[:cut])
    after = whole.feed(reports[cut:]) + whole.flush()

    first = Driven()
    first.feed(reports[:cut])
    once = first.restart(reports[:cut])
    second = first.restart(reports[:cut] + reports[:cut])  # every record re-read twice
    assert second.detector.state_reports == once.detector.state_reports
    assert second.detector.surge.state_reports == once.detector.surge.state_reports
    resumed = second.feed(reports[cut:]) + second.flush()
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
        driven = Driven()
        events = driven.feed(first_part)
        events += driven.detector.advance(first_part[-1].ts_ms)  # processed up to here
        driven.detector.block(reporter="mallory")
        if restart:
            driven = driven.restart(first_part)
        events += driven.feed(later) + driven.flush()
        return [event.to_json() for event in events]

    uninterrupted = run(restart=False)
    assert any(b'"opened"' in line for line in uninterrupted)
    assert run(restart=True) == uninterrupted
