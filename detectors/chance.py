"""What chance brings: whether a group of free reports stands out from the background around it
(the expectation-based scan test of detectors/significance.py at each scale), and whether what
an open incident still gains is only that background."""

from __future__ import annotations

import math

from geoincident.detectors.clusters import window_score
from geoincident.detectors.lifecycle import Incident
from geoincident.detectors.params import CategoryParams, DetectorParams
from geoincident.detectors.report import Report
from geoincident.detectors.significance import (
    MIN_SPAN_MS,
    Background,
    SignificanceParams,
    Verdict,
    judge,
    poisson_tail,
)
from geoincident.detectors.surge import SurgeDetector
from geoincident.geo.distance import haversine_m

_PASS = Verdict(True, 0.0, 0.0, 0.0, 0.0, 0.0)


class Chance:
    """The background (free reports, by neighbourhood) and the tests against it."""

    def __init__(self, params: DetectorParams, surge: SurgeDetector) -> None:
        self.params = params
        self.surge = surge
        # free reports: grouping.Grouping adds and removes them
        self.background = Background(params.significance.neighbourhood_m)
        # event time of the first report processed: rates are never divided by time not seen
        self.first_ms: int | None = None
        self._scales: dict[str, list[tuple[float, float]]] = {}
        # category -> (its significance settings, its chance incidents per day)
        self._rules: dict[str, tuple[SignificanceParams, float]] = {}

    def rules_of(self, category: str) -> tuple[SignificanceParams, float]:
        found = self._rules.get(category)
        if found is None:
            found = self._rules[category] = self.params.significance_of(category)
        return found

    def scales_of(
        self, category: str, category_params: CategoryParams
    ) -> list[tuple[float, float]]:
        scales = self._scales.get(category)
        if scales is None:
            significance = self.rules_of(category)[0]
            radii = sorted({r for r in significance.radii_m if r < category_params.radius_m})
            radii.append(category_params.radius_m)
            windows = sorted({w for w in significance.windows_s if w < category_params.window_s})
            windows.append(category_params.window_s)
            scales = self._scales[category] = [(r, w) for r in radii for w in windows]
        return scales

    def verdict(
        self,
        members: list[tuple[Report, float]],
        lat: float,
        lon: float,
        end_ms: int,
        category_params: CategoryParams,
        clock_ms: int | None,
    ) -> Verdict:
        """The scan test of a group (centred at lat, lon; its window ending at end_ms) at each
        scale."""
        category = members[0][0].category
        significance, budget = self.rules_of(category)
        if not significance.enabled:
            return _PASS
        scales = self.scales_of(category, category_params)
        now_ms = clock_ms if clock_ms is not None else end_ms
        span_min = self._span_ms(now_ms, category_params.window_ms) / 60_000.0
        rate = self._background_rate(category, lat, lon, members, now_ms, span_min)
        area_rate = self.background.total(category) / span_min
        distances = [haversine_m(lat, lon, m.lat, m.lon) for m, _ in members]
        # The summed weight inside a scale bounds its independent weight from above, and the
        # chance rate falls as the count grows: a scale that fails with the bound fails, so
        # the union-finds run only where they can change the verdict (most groups in a busy
        # city fail every scale on the bound alone).
        bounds = []
        for radius_m, window_s in scales:
            start_ms = end_ms - int(window_s * 1000)
            total = 0.0
            for (member, weight), distance in zip(members, distances, strict=True):
                if distance <= radius_m and member.ts_ms >= start_ms:
                    total += weight
            bounds.append(total)
        bounded = judge(scales, bounds, rate, area_rate, budget)
        if not bounded.significant:
            return bounded
        counts = []
        for (radius_m, window_s), bound in zip(scales, bounds, strict=True):
            if not judge(
                [(radius_m, window_s)], [bound], rate, area_rate, budget * len(scales)
            ).significant:
                counts.append(0.0)  # cannot pass: its exact count is no higher than the bound
                continue
            start_ms = end_ms - int(window_s * 1000)
            inside = [
                entry
                for entry, distance in zip(members, distances, strict=True)
                if distance <= radius_m and entry[0].ts_ms >= start_ms
            ]
            counts.append(window_score(inside, start_ms, end_ms)[0])
        return judge(scales, counts, rate, area_rate, budget)

    def confidence_factor(self, category: str, verdict: Verdict) -> float:
        """How clearly a group stood out, for its confidence: budget / (budget + F), F its
        chance openings per day (0 where the test is off or nothing like it happens by
        chance)."""
        budget = self.rules_of(category)[1]
        return budget / (budget + verdict.false_per_day)

    def only_background(self, incident: Incident, now_ms: int) -> bool:
        """Whether the members an incident gained over the last `resolve_after` are no more
        than the background around it brings to any place its size: then nothing is happening
        there any more. Only where the background is expected to bring at least one report
        into its radius in that time; where reports are rare a single member keeps an
        incident open, as before. Downtown the three or four strangers an hour who pass
        within its radius do not."""
        significance = self.rules_of(incident.category)[0]
        if not significance.enabled:
            return False
        resolve_after_ms = self.params.resolve_after_ms_of(incident.category)
        since_ms = now_ms - resolve_after_ms
        recent = [ts_ms for ts_ms in incident.recent_ts if ts_ms > since_ms]
        incident.recent_ts = recent
        if not recent:
            return True
        category_params = self.params.for_category(incident.category)
        lat, lon = incident.centre()
        span_min = self._span_ms(now_ms, category_params.window_ms) / 60_000.0
        rate = self._background_rate(incident.category, lat, lon, [], now_ms, span_min)
        area_km2 = math.pi * (category_params.radius_m / 1000.0) ** 2
        expected = rate * area_km2 * resolve_after_ms / 60_000.0
        if expected < 1.0:
            return False  # the background brings nobody: any member is news, as before
        return poisson_tail(len(recent), expected) >= significance.still_active_p

    def _span_ms(self, now_ms: int, window_ms: int) -> int:
        """Event time a window-long count covers: the window, or less at a cold start."""
        seen_ms = now_ms - (self.first_ms if self.first_ms is not None else now_ms)
        return max(MIN_SPAN_MS, min(window_ms, seen_ms))

    def _background_rate(
        self,
        category: str,
        lat: float,
        lon: float,
        members: list[tuple[Report, float]],
        now_ms: int,
        span_min: float,
    ) -> float:
        """Reports of the category per km² per minute around a group, not counting the group:
        the highest of the neighbourhood over the local window (`span_min` of event time), the
        surge region's short-term rate and its long-term baseline, and the surge baseline
        floor."""
        own = len(members)  # free reports still, so counted in the background
        count, area_km2 = self.background.around(category, lat, lon, own)
        rate = max(0, count - own) / area_km2 / span_min
        region_rate = self.surge.region_rate_per_km2_min(category, lat, lon, members, now_ms)
        return max(rate, region_rate)
