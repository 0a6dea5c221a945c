"""Where a processed report goes: into the nearest open incident, or among the free reports to
wait for company (enough of them agreeing, and standing out from chance, open an incident);
and out of either once it leaves its category's window."""

from __future__ import annotations

import heapq
from array import array
from collections import deque

from geoincident.detectors.chance import Chance
from geoincident.detectors.clusters import AccuracyWeights, Cluster, FreeReports, window_score
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.incidents import IncidentBook
from geoincident.detectors.params import CategoryParams, DetectorParams
from geoincident.detectors.report import Report
from geoincident.detectors.reputation import Reputation
from geoincident.geo.distance import WeightedCentroid

# `Expiry.next_ms` while it holds nothing: later than any event time
NEVER_MS = 1 << 62


class _Queue:
    """Reports of one window length that leave in the order they came: the reports, and the
    number each came as (an array of ints: no object per report)."""

    __slots__ = ("reports", "seqs", "head")

    def __init__(self) -> None:
        self.reports: deque[Report] = deque()
        self.seqs: array[int] = array("q")
        self.head = 0  # seqs before it have left

    def first_seq(self) -> int:
        return self.seqs[self.head]

    def append(self, report: Report, seq: int) -> None:
        self.reports.append(report)
        self.seqs.append(seq)

    def popleft(self) -> Report:
        head = self.head + 1
        if head >= 4096 and 2 * head >= len(self.seqs):
            del self.seqs[:head]
            head = 0
        self.head = head
        return self.reports.popleft()


class Expiry:
    """Every processed report until it leaves its category's window, given back in the order
    they leave: by the time they leave, then by the order they came (`add`).

    Reports processed in event-time order leave in the order they came among those of the same
    window length, so each window length has a first-in first-out queue; a late report, which
    would leave before reports already queued, goes into a heap. That costs a report held a few
    bytes where a heap entry of its own costs over a hundred."""

    __slots__ = ("_queues", "_late", "_seq", "size", "next_ms")

    def __init__(self) -> None:
        # window length -> its queue (a detector has few window lengths: one per category)
        self._queues: dict[int, _Queue] = {}
        # (leaves at, number it came as, report): late reports only
        self._late: list[tuple[int, int, Report]] = []
        self._seq = 0
        self.size = 0
        # the time the next report leaves at; NEVER_MS when none is held
        self.next_ms = NEVER_MS

    def __len__(self) -> int:
        return self.size

    def add(self, report: Report, window_ms: int) -> None:
        self._seq += 1
        leaves_ms = report.ts_ms + window_ms
        queue = self._queues.get(window_ms)
        if queue is None:
            queue = self._queues[window_ms] = _Queue()
        reports = queue.reports
        if not reports or reports[-1].ts_ms <= report.ts_ms:
            queue.append(report, self._seq)
        else:
            heapq.heappush(self._late, (leaves_ms, self._seq, report))
        self.size += 1
        if leaves_ms < self.next_ms:
            self.next_ms = leaves_ms

    def pop(self) -> Report:
        """The report that leaves first (at `next_ms`); there must be one."""
        best_ms = NEVER_MS
        best_seq = 0
        best: _Queue | None = None
        for window_ms, queue in self._queues.items():
            if queue.reports:
                leaves_ms = queue.reports[0].ts_ms + window_ms
                if leaves_ms < best_ms or (leaves_ms == best_ms and queue.first_seq() < best_seq):
                    best_ms, best_seq, best = leaves_ms, queue.first_seq(), queue
        late = self._late
        if late and (late[0][0] < best_ms or (late[0][0] == best_ms and late[0][1] < best_seq)):
            report = heapq.heappop(late)[2]
        else:
            assert best is not None
            report = best.popleft()
        self.size -= 1
        self.next_ms = self._next_ms()
        return report

    def _next_ms(self) -> int:
        next_ms = self._late[0][0] if self._late else NEVER_MS
        for window_ms, queue in self._queues.items():
            if queue.reports:
                leaves_ms = queue.reports[0].ts_ms + window_ms
                if leaves_ms < next_ms:
                    next_ms = leaves_ms
        return next_ms


class Grouping:
    """The free reports, and every processed report until it leaves its window."""

    def __init__(
        self,
        params: DetectorParams,
        book: IncidentBook,
        chance: Chance,
        accuracy: AccuracyWeights,
        seen: dict[str, Cluster | Report | None],
        reputation: Reputation,
    ) -> None:
        self.params = params
        # a report that joins an incident corroborates its reporter; one that leaves its
        # window free does not (detectors/reputation.py)
        self.reputation = reputation
        self.reputation_on = params.reputation.enabled
        self.book = book
        self.chance = chance
        self.accuracy = accuracy
        self.free = FreeReports(params.max_radius_m)
        self.background = chance.background
        # report id -> None while pending, the Report while free, its incident's Cluster after
        # (engine.Detector's: it tells duplicates by it)
        self.seen = seen
        # every processed report, until it leaves; the detector's loop reads
        # `expiry.next_ms` to call `forget` only when one is due
        self.expiry = Expiry()
        # groups that reached the threshold but not significance (a metric)
        self.chance_groups = 0
        self._category_params = {name: params.for_category(name) for name in params.taxonomy.names}

    def params_of(self, category: str) -> CategoryParams:
        found = self._category_params.get(category)
        if found is None:
            found = self._category_params[category] = self.params.for_category(category)
        return found

    def process(
        self, report: Report, late: bool, weight: float, clock_ms: int | None
    ) -> list[IncidentEvent]:
        """A report the watermark passed (`late`: one that came behind it), at the detector's
        clock: it joins an incident, or waits free and may open one."""
        category_params = self._enter_window(report)
        cluster = self.book.nearest(report, category_params.radius_m)
        if cluster is not None:
            if self.reputation_on:
                self.reputation.corroborated(report.reporter, report.ts_ms)
            return self.book.join(cluster, report, weight, clock_ms)
        self._free(report, weight)
        return self._try_open(report, late, category_params, clock_ms)

    def replay(self, report: Report, weight: float, restored_members: dict[str, Cluster]) -> None:
        """A report read again after a restart goes back where it was: into its incident's
        window (the checkpoint lists members) or among the free reports. Nothing is decided."""
        category_params = self._enter_window(report)
        cluster = restored_members.get(report.id)
        if cluster is None:
            # incidents too large to list every member fall back to the distance rule
            cluster = self.book.nearest(report, category_params.radius_m, incomplete=True)
        if cluster is not None:
            cluster.add(report, weight)
            self.seen[report.id] = cluster
        else:
            self._free(report, weight)

    def _enter_window(self, report: Report) -> CategoryParams:
        """A processed report is held until it leaves its category's window (and counts for
        the event time seen, which rates are divided by); returns the category's rules."""
        category = report.category
        category_params = self._category_params.get(category) or self.params_of(category)
        self.expiry.add(report, category_params.window_ms)
        chance = self.chance
        if chance.first_ms is None or report.ts_ms < chance.first_ms:
            chance.first_ms = report.ts_ms
        return category_params

    def forget(self, now_ms: int) -> None:
        """Reports that left every window before now_ms: out of their incident's window, or
        no longer free."""
        expiry = self.expiry
        seen = self.seen
        reputation = self.reputation if self.reputation_on else None
        while expiry.next_ms < now_ms:
            left_ms = expiry.next_ms
            report = expiry.pop()
            owner = seen.pop(report.id, None)
            if owner is None:
                continue
            if owner.__class__ is Cluster:
                owner.remove_id(report.id)  # type: ignore[union-attr]
            else:
                self._unfree(report)
                if reputation is not None:  # it never found company
                    reputation.uncorroborated(report.reporter, left_ms)

    def _free(self, report: Report, weight: float) -> None:
        """A report no incident took: it waits for company, and is background meanwhile
        (members of incidents are explained by their incident, not by chance)."""
        self.free.add(report, weight)
        self.background.add(report.category, report.lat, report.lon)
        self.seen[report.id] = report

    def _unfree(self, report: Report) -> None:
        """A free report joins an incident or leaves the window: no longer waiting, nor
        background."""
        self.free.remove(report)
        self.background.remove(report.category, report.lat, report.lon)

    def _try_open(
        self, report: Report, late: bool, category_params: CategoryParams, clock_ms: int | None
    ) -> list[IncidentEvent]:
        """Do the free reports around this one agree enough, and stand out from the background?

        In order, the window is the one ending at this report. A late report can complete a
        window that ends at a later report: the first such window wins (its end is the
        `validated_at`), as if the report had arrived in time.
        """
        window_ms = category_params.window_ms
        threshold = category_params.threshold
        ts_ms = report.ts_ms
        around = self.free.near(
            report.category,
            report.lat,
            report.lon,
            category_params.radius_m,
            ts_ms - window_ms,
            ts_ms + window_ms if late else ts_ms,
        )
        total = 0.0
        for _, weight in around:
            total += weight
        if total < threshold:  # an upper bound of the independent weight
            return []
        ends = sorted({entry[0].ts_ms for entry in around if entry[0].ts_ms >= ts_ms})
        for end_ms in ends:
            group = [entry for entry in around if end_ms - window_ms <= entry[0].ts_ms <= end_ms]
            if window_score(group, end_ms - window_ms, end_ms)[0] < threshold:
                continue
            events = self._open_group(group, end_ms, report, category_params, clock_ms)
            if events is not None:
                return events
        return []

    def _centre(self, group: list[tuple[Report, float]]) -> tuple[float, float]:
        centroid = WeightedCentroid()
        accuracy = self.accuracy
        for member, _ in group:
            centroid.add(member.lat, member.lon, accuracy(member.accuracy_m))
        return centroid.latlon()

    def _open_group(
        self,
        group: list[tuple[Report, float]],
        end_ms: int,
        trigger: Report,
        category_params: CategoryParams,
        clock_ms: int | None,
    ) -> list[IncidentEvent] | None:
        """Open an incident of the free reports around the group's centre, if they pass the
        threshold and the significance test; None when they do not."""
        window_ms = category_params.window_ms
        threshold = category_params.threshold
        lat, lon = self._centre(group)
        members = self.free.near(
            trigger.category, lat, lon, category_params.radius_m, end_ms - window_ms, end_ms
        )
        if window_score(members, end_ms - window_ms, end_ms)[0] < threshold:
            members = group
        verdict = self.chance.verdict(members, lat, lon, end_ms, category_params, clock_ms)
        if not verdict.significant:
            self.chance_groups += 1
            return None
        for member, _ in members:
            self._unfree(member)
        if self.reputation_on:
            corroborated = self.reputation.corroborated
            for member, _ in members:
                corroborated(member.reporter, member.ts_ms)
        significance = self.chance.confidence_factor(trigger.category, verdict)
        return self.book.open(members, end_ms, trigger, category_params, clock_ms, significance)
