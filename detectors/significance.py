"""Significance: is a group of agreeing reports more than the local background makes by chance?

Where reports are rare, five independent people at one spot within minutes never happens by
chance; downtown in a storm it happens every few minutes. So an incident opens only when its
reports, at one of a few spatial and temporal scales (radius r around the group's centre,
trailing window w), are unlikely under the background rate of their category around them.

The test is the expectation-based scan statistic (Neill 2005) in its simplest form, with the
multiplicity of places and windows accounted for as an expected number of chance openings
per day (Kulldorff's prospective space-time scan asks the same question, answered by Monte
Carlo; here it is closed form, so a decision costs microseconds):

- the background rate `lambda` (reports per km² per minute) of the category around the group is
  the highest of three estimates, none of which counts the group's own reports: the same
  category's free reports in the local window over a ~2.5 km neighbourhood, divided by the
  area people report from there (`Background`), the short-term rate of the surge region (STA)
  and the region's long-term baseline (LTA), with the surge baseline floor as the least rate
  (see `Chance._background_rate` in chance.py);
- at scale (r, w) the group holds `n` (its independent weight inside the disk and window), and
  the background predicts `mu = lambda * pi r² * w` there;
- chance groups of that size open at a rate of about `R * P(N >= n - 1 | mu)` per minute over the
  whole area, where R is the category's report rate over the area: a chance group crosses n
  when a report arrives while n - 1 wait around it (the upcrossing rate of a sliding-window
  count, summed over places: Naus's approximation). Using the local rate everywhere assumes
  the whole area is as busy as this spot, which errs on the strict side for a hot spot;
- the group is significant when that rate, per day and multiplied by the number of scales
  tested, is within `max_false_per_day` divided among the categories.

With a sparse background mu is tiny at every scale and the test always passes: nothing changes
where reports are rare. A cold start estimates from what the window holds (rates are divided
by the event time actually seen, not by a full window), so an empty history does not flood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geoincident.detectors.bounds import bounded, check
from geoincident.geo.grid import BoxCounts, DistanceGrid

MINUTES_PER_DAY = 1440.0
# A rate is never estimated over less than this much event time: one minute of history is
# already a noisy estimate; less is none.
MIN_SPAN_MS = 60_000
_KM_PER_DEG = 6_371.0088 * math.pi / 180.0


@dataclass(frozen=True, slots=True)
class SignificanceParams:
    """The `[detection.significance]` section: defaults and range rules of its keys."""

    enabled: bool = True
    # Chance incidents per day that the test allows over the whole stream, all categories.
    max_false_per_day: float = bounded(1.0, gt=0)
    # The scales tested: disk radii around the group's centre and trailing windows. Scales
    # beyond a category's own radius or window are not tested.
    radii_m: tuple[float, ...] = bounded((50.0, 100.0, 250.0), gt=0, each=True, nonempty=True)
    windows_s: tuple[float, ...] = bounded(
        (180.0, 300.0, 600.0, 900.0), gt=0, each=True, nonempty=True
    )
    # How far around a group its background is counted (5 x 5 boxes half this wide).
    neighbourhood_m: float = bounded(1000.0, gt=0, le=50_000)
    # An open incident whose members over the last `resolve_after_s` are this likely (or more)
    # under the background around it is no longer active: it resolves as quiet.
    still_active_p: float = bounded(0.01, gt=0, lt=1)

    def __post_init__(self) -> None:
        check(self, "detection.significance")


def poisson_tail(k: int, mu: float) -> float:
    """P(N >= k) for N ~ Poisson(mu), accurate in the far tail (summed from k upwards when the
    tail is small, rather than 1 - the head, which cancels to 0)."""
    if k <= 0:
        return 1.0
    if mu <= 0.0:
        return 0.0
    log_term = k * math.log(mu) - mu - math.lgamma(k + 1)
    if mu < k:
        term = math.exp(log_term)
        total = term
        i = k
        while term > total * 1e-16:
            i += 1
            term *= mu / i
            total += term
            if i > k + 1000:
                break
        return min(1.0, total)
    head = 0.0
    term = math.exp(-mu)
    for i in range(k):
        head += term
        term *= mu / (i + 1)
    return max(0.0, 1.0 - head)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one test: the best scale and the expected chance openings per day there
    (already multiplied by the number of scales)."""

    significant: bool
    false_per_day: float
    radius_m: float
    window_s: float
    count: float
    expected: float


class Background:
    """Counts of the free reports (not members of an incident: those are explained) by category
    over the local window, in total and per box of a grid half `neighbourhood_m` wide: the
    background around a point is the 5 x 5 boxes around it (at least `neighbourhood_m` in every
    direction). Counted when a report becomes free and uncounted when it joins an incident or
    leaves the window, so after a restart the windows' rebuild rebuilds it.

    The area a count is divided by is that of the boxes where anything (any category) was
    reported: at a city's edge, a shore or a park, the empty boxes are not background that
    happens to be quiet but places nobody reports from, and counting them would dilute the
    rate (measured: chance incidents at the edge of a busy simulated city). Boxes half the
    neighbourhood wide follow an edge closely yet are rarely empty inside a city of any
    density where the rate matters (at 300 reports/min over 400 km², one box holds ~3 reports
    of some category per window); where they are, the rate comes out higher, the strict side."""

    __slots__ = ("grid", "_boxes", "_totals", "_area_cache")

    def __init__(self, neighbourhood_m: float) -> None:
        self.grid = DistanceGrid(neighbourhood_m / 2.0)
        # category -> reports by box (the reports of any category in a box are their sum: a
        # table of its own would cost every free report a second entry)
        self._boxes: dict[str, BoxCounts] = {}
        self._totals: dict[str, int] = {}
        self._area_cache: dict[int, float] = {}

    def add(self, category: str, lat: float, lon: float) -> None:
        boxes = self._boxes.get(category)
        if boxes is None:
            boxes = self._boxes[category] = BoxCounts(self.grid)
        boxes.add(self.grid.box(lat, lon))
        self._totals[category] = self._totals.get(category, 0) + 1

    def remove(self, category: str, lat: float, lon: float) -> None:
        self._boxes[category].remove(self.grid.box(lat, lon))
        self._totals[category] -= 1

    def total(self, category: str) -> int:
        return self._totals.get(category, 0)

    def around(self, category: str, lat: float, lon: float, own: int = 0) -> tuple[int, float]:
        """(reports of the category in the 5 x 5 boxes around the point, the area in km² of
        the boxes people report from there). `own` reports of the total are the group being
        judged: they occupy boxes but are not evidence of where the background lives."""
        boxes = self._boxes.get(category)
        every = list(self._boxes.values())
        count = 0
        reports = 0
        inhabited = 0
        neighbourhood = self.grid.block(lat, lon, 2)
        for box in neighbourhood:
            in_box = 0
            for of_category in every:
                found = of_category.get(box)
                if found:
                    in_box += found
                    if of_category is boxes:
                        count += found
            if in_box:
                reports += in_box
                inhabited += 1
        boxes_used = inhabited_boxes(max(0, reports - own), inhabited, len(neighbourhood))
        return count, self._box_km2(lat) * boxes_used

    def _box_km2(self, lat: float) -> float:
        row = math.floor(lat / self.grid.lat_step)
        area = self._area_cache.get(row)
        if area is None:
            width_deg, _ = self.grid.columns(row)
            height_km = self.grid.lat_step * _KM_PER_DEG
            mid = (row + 0.5) * self.grid.lat_step
            width_km = width_deg * _KM_PER_DEG * math.cos(math.radians(mid))
            area = self._area_cache[row] = max(height_km * width_km, 1e-9)
        return area


def inhabited_boxes(reports: int, occupied: int, total: int) -> float:
    """How many of `total` boxes people report from, given `reports` spread over `occupied`
    of them: the k in [occupied, total] for which k boxes would leave `occupied` non-empty on
    average (k (1 - exp(-reports / k)) = occupied). A few reports in a few boxes say nothing
    about the rest (k = total: the whole neighbourhood counts); many reports in a few boxes
    say the rest is empty (an edge: only those count)."""
    if reports <= occupied or occupied >= total:
        return float(total)

    def filled(k: float) -> float:
        return k * (1.0 - math.exp(-reports / k))

    if filled(float(total)) <= occupied:
        return float(total)
    low, high = float(max(occupied, 1)), float(total)
    for _ in range(40):
        mid = (low + high) / 2.0
        if filled(mid) < occupied:
            low = mid
        else:
            high = mid
    return high


def judge(
    scales: list[tuple[float, float]],
    counts: list[float],
    rate_per_km2_min: float,
    area_rate_per_min: float,
    budget_per_day: float,
) -> Verdict:
    """Test a group at each (radius_m, window_s) scale holding `counts[i]` independent weight.

    `rate_per_km2_min` is the background density around it, `area_rate_per_min` the category's
    report rate over the whole stream (R above), `budget_per_day` its share of
    `max_false_per_day`.
    """
    best: Verdict | None = None
    tested = len(scales)
    for (radius_m, window_s), count in zip(scales, counts, strict=True):
        if count <= 0:
            continue
        area_km2 = math.pi * (radius_m / 1000.0) ** 2
        expected = rate_per_km2_min * area_km2 * (window_s / 60.0)
        needed = max(0, math.ceil(count - 1e-9) - 1)
        false_per_day = (
            MINUTES_PER_DAY * area_rate_per_min * poisson_tail(needed, expected) * tested
        )
        if best is None or false_per_day < best.false_per_day:
            best = Verdict(
                false_per_day <= budget_per_day,
                false_per_day,
                radius_m,
                window_s,
                count,
                expected,
            )
    if best is None:
        return Verdict(False, math.inf, 0.0, 0.0, 0.0, 0.0)
    return best
