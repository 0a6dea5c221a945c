"""Which surge keys, (H3 region, category, language), are tracked in full, and for how long.

A key is tracked from its PROMOTE_AFTER-th report within one short window; until then only its
last few reports are held. A sweep every minute of event time lets go of the holds older than
the short window, and every EVICT_EVERY_MS forgets the keys that can no longer matter.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, TypeAlias

from h3.api.basic_int import latlng_to_cell as _latlng_to_cell

from geoincident.detectors.report import Report
from geoincident.detectors.surge_baseline import BUCKET_MS, Baseline, Entry, Key, KeyState
from geoincident.detectors.timers import Timers

if TYPE_CHECKING:
    from geoincident.detectors.surge import SurgeParams

# The sweep's timer kind; the surge detector's others are in surge_decisions.
SWEEP = 2
# The holds of keys not tracked are pruned on these event-time boundaries: a report is let go
# of at most a minute after it left the short window, so what the tracker holds fills within
# one short window and stays level (pruned every ten minutes, it swung by five minutes' worth
# of reports, most of a worker's memory swing under steady load).
SWEEP_MS = BUCKET_MS
# Keys are examined for eviction on these event-time boundaries (a multiple of SWEEP_MS).
EVICT_EVERY_MS = 10 * BUCKET_MS
# A key with no open surge, no cooldown, an empty window and a baseline below this fraction of
# the floor is forgotten: recreated later at 0, its ratio is the same (max(b, floor) == floor).
EVICT_FRACTION_OF_FLOOR = 0.1
# Keys are tracked in full from their PROMOTE_AFTER-th report within one short window. A key
# never promoted runs below PROMOTE_AFTER / short window (0.6/min by default); a surge needs
# min_count in the window (6/min), a ratio of 10 over such a baseline, above min_ratio (8): so
# whether such a key's baseline were tracked would change no decision (it holds as long as
# PROMOTE_AFTER <= min_count / min_ratio). Bounding the span by the short window keeps all
# window state re-readable from the input after a restart (see `SurgeDetector.rebuild`).
PROMOTE_AFTER = 3
# What a key not tracked holds: its last reports, or the report itself when there is one.
Held: TypeAlias = Report | tuple[Report, ...]
UNDETERMINED_LANG = "und"


@functools.lru_cache(maxsize=4096)
def language_of(lang: str | None) -> str:
    """The primary language subtag, lower-case ("en-US" -> "en"); "und" when absent or bogus."""
    if not lang:
        return UNDETERMINED_LANG
    primary = lang.strip().replace("_", "-").split("-", 1)[0].lower()
    if not 1 <= len(primary) <= 8 or not (primary.isascii() and primary.isalpha()):
        return UNDETERMINED_LANG
    return primary


class KeyTracker:
    """The keys tracked in full, the last reports of the others, and the sweep."""

    def __init__(self, params: SurgeParams, baseline: Baseline, timers: Timers) -> None:
        self.keys: dict[Key, KeyState] = {}  # changed in place only (the decisions share it)
        # The last reports of keys not tracked: (category, language) -> region -> reports, in
        # the order they came (the report itself when it is the only one). Most keys of a
        # national stream hold a single report (a district reports a category a few times a
        # day), so a key costs no tuple of its own and a report held no entry of its own until
        # its key is promoted. A region moves to the end of its dict when it holds a new
        # report: the regions are in the order of their newest report, the event-time order
        # the detector processes reports in, and the sweep lets go of them from the front.
        self.sparse: dict[tuple[str, str], dict[int, Held]] = {}
        # sorted, so sums over languages add up in the same order in every process
        self.langs: tuple[str, ...] = ()
        self.sweep_scheduled = False
        self.baseline = baseline
        self.timers = timers
        self.region_resolution = params.region_resolution
        self.window_ms = params.window_ms
        self.evict_below = params.baseline_floor_per_min * EVICT_FRACTION_OF_FLOOR

    @property
    def held_reports(self) -> int:
        """Reports held in short windows, tracked or not."""
        held = sum(len(_reports(h)) for regions in self.sparse.values() for h in regions.values())
        return held + sum(len(key.window) for key in self.keys.values())

    def key_of(self, report: Report) -> Key:
        """The key of a report: (region, category, language)."""
        return (
            _latlng_to_cell(report.lat, report.lon, self.region_resolution),
            report.category,
            language_of(report.lang),
        )

    def held(self, key_id: Key) -> tuple[Report, ...]:
        """The last reports held of a key not tracked (none if it holds none)."""
        regions = self.sparse.get((key_id[1], key_id[2]))
        return _reports(regions.get(key_id[0])) if regions else ()

    def hold_or_promote(
        self, key_id: Key, report: Report, now_ms: int, sweep: bool
    ) -> KeyState | None:
        """A report of a key not tracked yet. A (region, category, language) reporting under
        PROMOTE_AFTER per short window cannot change a decision (see PROMOTE_AFTER): it is only
        remembered as its last few reports, which join the key's window (returned) once it
        gets busier. `sweep`: schedule a sweep if none is (not while rebuilding)."""
        ts_ms = report.ts_ms
        region, category, lang = key_id
        if lang not in self.langs:
            self.langs = tuple(sorted({*self.langs, lang}))
        regions = self.sparse.get((category, lang))
        if regions is None:
            regions = self.sparse[(category, lang)] = {}
        before = regions.pop(region, None)
        if before is None:  # the usual case: the region's first report in a short window
            regions[region] = report
            if sweep:
                self.schedule_sweep(now_ms)
            return None
        since_ms = ts_ms - self.window_ms
        held = (*[r for r in _reports(before) if r.ts_ms > since_ms], report)
        if len(held) < PROMOTE_AFTER:
            regions[region] = held if len(held) > 1 else report
            if sweep:
                self.schedule_sweep(now_ms)
            return None
        key = self._key_for(key_id, ts_ms, now_ms)
        count = self.baseline.count
        for held_entry in sorted([entry_of(r) for r in held]):
            count(key, held_entry)
        return key

    def _key_for(self, key_id: Key, promoted_ms: int, now_ms: int) -> KeyState:
        key = self.keys.get(key_id)
        if key is None:
            origin = self.baseline.origin_bucket
            assert origin is not None
            # A new key has (implicitly) folded empty minutes since the detector's origin; it
            # counts the reports held for the last short window before its promotion.
            key = self.keys[key_id] = KeyState(key_id, origin - 1, promoted_ms - self.window_ms)
            self.schedule_sweep(now_ms)
        return key

    def schedule_sweep(self, now_ms: int) -> None:
        if not self.sweep_scheduled:
            self.sweep_scheduled = True
            self.timers.add((now_ms // SWEEP_MS + 1) * SWEEP_MS, SWEEP, None, None)

    def sweep(self, now_ms: int) -> None:
        """Let go of holds older than the short window; runs every SWEEP_MS of event time, and
        on EVICT_EVERY_MS boundaries also forgets keys that can no longer matter.

        Each dict of regions is in the order of their newest report, so the sweep stops at its
        first region with a report inside the short window: it looks at the holds it lets go
        of, not at every hold every minute. A report processed late (behind the detector's
        clock) may leave an older hold behind a fresher one, to be let go of by a later sweep;
        what a hold gives is read within the short window anyway (`hold_or_promote`,
        `SurgeDetector.background`), so no decision depends on when it goes."""
        keys = self.keys
        if now_ms % EVICT_EVERY_MS == 0:
            self._evict(now_ms)
        horizon = now_ms - self.window_ms
        emptied = []
        for pair, regions in self.sparse.items():
            stale = []
            for region, held in regions.items():
                if _reports(held)[-1].ts_ms > horizon:
                    break
                stale.append(region)
            for region in stale:
                del regions[region]
            if not regions:
                emptied.append(pair)
        for pair in emptied:
            del self.sparse[pair]
        if keys or self.sparse:
            self.timers.add(now_ms + SWEEP_MS, SWEEP, None, None)
        else:
            self.sweep_scheduled = False

    def _evict(self, now_ms: int) -> None:
        keys = self.keys
        measure = self.baseline.measure
        doomed = []
        for key_id, key in keys.items():
            if key.surge is not None:
                continue
            if key.cooldown_until_ms is not None and key.cooldown_until_ms > now_ms:
                continue
            _, _, estimate, _ = measure(key, now_ms)
            if key.window or key.pending or estimate is None:
                continue
            if estimate < self.evict_below:
                doomed.append(key_id)
        for key_id in doomed:
            del keys[key_id]

    def restore(self, keys: dict[Key, KeyState], sweep_scheduled: bool) -> None:
        """Tracked keys from a checkpoint; held reports are read again (`rebuild`)."""
        self.keys.clear()
        self.keys.update(keys)
        self.sparse = {}
        self.langs = tuple(sorted({ident[2] for ident in keys}))
        self.sweep_scheduled = sweep_scheduled


def _reports(held: Held | None) -> tuple[Report, ...]:
    """The reports a key not tracked holds, in the order they came."""
    if held is None:
        return ()
    return held if isinstance(held, tuple) else (held,)


def entry_of(report: Report) -> Entry:
    """What a tracked key's window holds of a report."""
    return (report.ts_ms, report.id, report.reporter, report.device, report.source)
