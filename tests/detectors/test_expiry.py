"""The reports held until they leave their window (grouping.Expiry) leave in the order a heap of
(leaves at, order they came, report) gives: by the time they leave, ties by the order they
came, whatever mix of window lengths and late reports."""

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from geoincident.detectors.grouping import NEVER_MS, Expiry
from tests.builders import report

# (minutes after the start, window length in minutes): few distinct values, so ties are common
arrivals = st.lists(st.tuples(st.integers(0, 30), st.sampled_from([5, 10, 15])), max_size=200)


@settings(max_examples=300, deadline=None)
@given(arrivals=arrivals, cuts=st.lists(st.integers(0, 60), max_size=20))
def test_reports_leave_by_time_then_by_the_order_they_came(arrivals, cuts):
    expiry = Expiry()
    heap: list[tuple[int, int, str]] = []
    left: list[tuple[int, str]] = []
    expected: list[tuple[int, str]] = []
    cut_at = {position * 10 % (len(arrivals) + 1): minute for position, minute in enumerate(cuts)}
    for seq, (minute, window_min) in enumerate(arrivals):
        if seq in cut_at:  # some leave between arrivals, as the detector's clock moves on
            now_ms = report("x", cut_at[seq]).ts_ms
            while heap and heap[0][0] < now_ms:
                leaves_ms, _, report_id = heapq.heappop(heap)
                expected.append((leaves_ms, report_id))
            while expiry.next_ms < now_ms:
                leaves_ms = expiry.next_ms
                left.append((leaves_ms, expiry.pop().id))
        held = report(f"r{seq}", minute)
        expiry.add(held, window_min * 60_000)
        heapq.heappush(heap, (held.ts_ms + window_min * 60_000, seq, held.id))
        assert expiry.next_ms == heap[0][0]
        assert len(expiry) == len(heap)
    while heap:
        leaves_ms, _, report_id = heapq.heappop(heap)
        expected.append((leaves_ms, report_id))
    while expiry.next_ms < NEVER_MS:
        leaves_ms = expiry.next_ms
        left.append((leaves_ms, expiry.pop().id))
    assert left == expected
    assert len(expiry) == 0


def test_a_long_queue_keeps_its_order_across_compactions_and_late_reports():
    expiry = Expiry()
    for n in range(10_000):
        expiry.add(report(f"r{n:05}", n / 1000), 60_000)  # 60 ms apart
    ids = []
    while expiry.next_ms < NEVER_MS:
        ids.append(expiry.pop().id)
        if len(ids) == 5_000:
            # late: one before the queue's first, one at the time of r06000 (which came first)
            expiry.add(report("early", 4.0), 60_000)
            expiry.add(report("tied", 6.0), 60_000)
    assert ids[:5_000] == [f"r{n:05}" for n in range(5_000)]
    assert ids[5_000] == "early"
    after = [f"r{n:05}" for n in range(5_000, 10_000)]
    after.insert(after.index("r06000") + 1, "tied")
    assert ids[5_001:] == after
