"""What a surge key has counted: its short window, its minute buckets and the EWMA baseline they
fold into (the rules are in surge.py's docstring).

A bucket is folded only once it lies wholly before the short window, so a burst never inflates
its own baseline; empty minutes are decayed in closed form, so the baseline's floats depend on
event time only, never on how often a key is measured.
"""

from __future__ import annotations

from bisect import insort
from typing import TYPE_CHECKING

import h3

if TYPE_CHECKING:
    from geoincident.detectors.surge import SurgeParams
    from geoincident.detectors.surge_decisions import _Surge

BUCKET_MS = 60_000

Key = tuple[int, str, str]  # (H3 region as an integer, category, lang)
# (ts_ms, report id, reporter, device, source): sorts by event time, then id.
Entry = tuple[int, str, str, str | None, str | None]


class KeyState:
    """Counts of one (region, category, lang): the short window, unfolded buckets, the EWMA;
    and the key's open surge or cooldown."""

    __slots__ = (
        "ident",
        "region",
        "category",
        "lang",
        "window",
        "reporters",
        "pending",
        "ewma",
        "ewma_bucket",
        "surge",
        "cooldown_until_ms",
        "since_ms",
    )

    def __init__(self, ident: Key, ewma_bucket: int, since_ms: int) -> None:
        self.ident = ident
        # reports at or before this were not counted (held no more when the key was promoted)
        self.since_ms = since_ms
        self.region: str = h3.int_to_str(ident[0])
        self.category = ident[1]
        self.lang = ident[2]
        # Lists, not deques: most keys sit empty for hours until their baseline fades (an empty
        # deque is 760 bytes, a list 56); the oldest entries are cut off a few at a time.
        self.window: list[Entry] = []
        self.reporters: dict[str, int] = {}  # reporter -> reports in the window
        self.pending: list[list[int]] = []  # [bucket, count], buckets not yet folded
        self.ewma = 0.0  # per-minute rate after folding bucket `ewma_bucket`
        self.ewma_bucket = ewma_bucket
        self.surge: _Surge | None = None
        self.cooldown_until_ms: int | None = None


class Baseline:
    """Counting into keys and measuring them: rate over the short window, baseline, ratio."""

    __slots__ = ("origin_bucket", "window_ms", "window_min", "decay", "floor", "calm_factor")

    def __init__(self, params: SurgeParams) -> None:
        # the first minute of event time seen: a baseline is corrected for the time since
        self.origin_bucket: int | None = None
        self.window_ms = params.window_ms
        self.window_min = params.window_ms / BUCKET_MS
        self.decay = 0.5 ** (BUCKET_MS / (params.baseline_half_life_s * 1000.0))
        self.floor = params.baseline_floor_per_min
        self.calm_factor = params.min_ratio / 2.0

    def count(self, key: KeyState, entry: Entry) -> None:
        """One report into a key's window and minute buckets (SurgeDetector.observe inlines
        the common case: in order, in the newest minute)."""
        window = key.window
        if not window or entry >= window[-1]:
            window.append(entry)
        else:  # a late report: keep the window in (ts, id) order
            insort(window, entry)
        reporter = entry[2]
        key.reporters[reporter] = key.reporters.get(reporter, 0) + 1
        bucket = entry[0] // BUCKET_MS
        pending = key.pending
        if pending and pending[-1][0] == bucket:
            pending[-1][1] += 1
        elif not pending or pending[-1][0] < bucket:
            pending.append([bucket, 1])
        else:
            for position, slot in enumerate(pending):
                if slot[0] == bucket:
                    slot[1] += 1
                    break
                if slot[0] > bucket:
                    pending.insert(position, [bucket, 1])
                    break

    def measure(self, key: KeyState, now_ms: int) -> tuple[int, float, float | None, float]:
        """(count, rate/min, baseline estimate/min or None, ratio) as of now_ms; the ratio
        divides by the estimate floored at `baseline_floor_per_min`."""
        cutoff = now_ms - self.window_ms
        window = key.window
        reporters = key.reporters
        gone = 0
        while gone < len(window) and window[gone][0] <= cutoff:
            reporter = window[gone][2]
            gone += 1
            left = reporters[reporter] - 1
            if left:
                reporters[reporter] = left
            else:
                del reporters[reporter]
        if gone:
            del window[:gone]
        count = len(window)
        rate = count / self.window_min
        estimate = self.estimate(key, now_ms)
        return count, rate, estimate, rate / self.used(estimate)

    def used(self, estimate: float | None) -> float:
        """The baseline a ratio divides by: the estimate, floored."""
        if estimate is None or estimate < self.floor:
            return self.floor
        return estimate

    def estimate(self, key: KeyState, now_ms: int) -> float | None:
        """Bias-corrected EWMA over the buckets wholly before the short window; None before the
        first such bucket exists. While the key's surge is open a bucket teaches the baseline at
        most `min_ratio / 2` x the baseline (the calm level): a surge does not explain itself
        away within the hour, yet a lasting new level is learned, over hours."""
        last = (now_ms - self.window_ms) // BUCKET_MS - 1
        decay = self.decay
        pending = key.pending
        origin = self.origin_bucket
        assert origin is not None
        folded = 0
        while folded < len(pending) and pending[folded][0] <= last:
            bucket, count = pending[folded]
            folded += 1
            carried = key.ewma * decay ** max(0, bucket - 1 - key.ewma_bucket)
            learned = float(count)
            if key.surge is not None:
                seen = bucket - origin
                estimate = carried / (1.0 - decay**seen) if seen > 0 else None
                learned = min(learned, self.calm_factor * self.used(estimate))
            key.ewma = carried * decay + (1.0 - decay) * learned
            key.ewma_bucket = bucket
        if folded:
            del pending[:folded]
        seen = last - origin + 1
        if seen <= 0:
            return None
        raw = key.ewma * decay ** (last - key.ewma_bucket) if last > key.ewma_bucket else key.ewma
        return raw / (1.0 - decay**seen)
