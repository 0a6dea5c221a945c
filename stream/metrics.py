"""The worker's Prometheus metrics (data contract §4) and their ``/metrics`` rendering.

Every metric lives on the :class:`WorkerMetrics` instance's own ``CollectorRegistry`` (with
the process, platform and GC collectors), never on prometheus-client's global one, so several
workers in one process (tests, benchmarks) neither collide nor add up.

Label sets known up front (every outcome, every rejection reason, every action and, given the
taxonomy, every category) are created at 0 when the instance is built: ``rate()``,
``increase()`` and "no reports" alerts need a series that exists before its first event.

The worker handles records in batches; the methods here take per-batch tallies and touch
pre-bound children, so the cost is a few dict lookups per batch, not per report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from geoincident import __version__
from geoincident.detectors.actions import ACTIONS as CONTRACT_ACTIONS
from geoincident.detectors.report import REASONS

__all__ = [
    "ACTIONS",
    "ACTION_OUTCOMES",
    "CONTENT_TYPE",
    "DETECTION_LATENCY_BUCKETS_S",
    "INCIDENT_EVENTS",
    "INCIDENT_KINDS",
    "REJECT_REASONS",
    "REPORT_OUTCOMES",
    "WorkerMetrics",
]

# The classic text exposition format: what every Prometheus version scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REPORT_OUTCOMES: tuple[str, ...] = ("accepted", "rejected", "duplicate", "unclassified")
# The data contract's rejection reasons (§1, "Bad input"), as the validator names them.
REJECT_REASONS: tuple[str, ...] = REASONS
INCIDENT_EVENTS: tuple[str, ...] = ("opened", "updated", "resolved")
INCIDENT_KINDS: tuple[str, ...] = ("local", "surge")
# The data contract's dispatcher actions (§3).
ACTIONS: tuple[str, ...] = CONTRACT_ACTIONS
# applied: took effect; unknown_incident: answered on the actions DLQ (data contract §3);
# invalid: not a well-formed action, also DLQ.
ACTION_OUTCOMES: tuple[str, ...] = ("applied", "unknown_incident", "invalid")
DEFAULT_DLQ_TOPICS: tuple[str, ...] = ("reports.dlq", "incident-actions.dlq")

# Detection latency runs from ~1 ms (the threshold-crossing report is the last of a fetched
# batch) to minutes (a backlog after a restart); dispatchers care about the seconds-to-minutes
# range, hence the density there; decisions wait for the watermark (allowed lateness, 120 s by
# default), hence the buckets around it. Upper bound 15 min, beyond that "+Inf" is the answer.
DETECTION_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    150.0,
    180.0,
    240.0,
    300.0,
    600.0,
    900.0,
)


class WorkerMetrics:
    """All metrics of one worker, on one registry.

    :param categories: the taxonomy's categories, to pre-create the incident series at 0;
        categories met later (surges of a new category, say) get their series on first use.
    :param dlq_topics: dead-letter topic names to pre-create ``dlq_records_total`` for.
    :param registry: a registry to fill; by default a fresh one with the process, platform
        and GC collectors.
    """

    def __init__(
        self,
        *,
        categories: Iterable[str] = (),
        dlq_topics: Iterable[str] = DEFAULT_DLQ_TOPICS,
        version: str = __version__,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry

        self.reports_total = Counter(
            "geoincident_reports_total",
            "Reports read from the reports topic, by what became of them.",
            ["outcome"],
            registry=registry,
        )
        self.reports_rejected_total = Counter(
            "geoincident_reports_rejected_total",
            "Reports sent to the dead-letter topic, by rejection reason.",
            ["reason"],
            registry=registry,
        )
        self.incidents_total = Counter(
            "geoincident_incidents_total",
            "Incident events emitted to the incidents topic.",
            ["event", "kind", "category"],
            registry=registry,
        )
        self.open_incidents = Gauge(
            "geoincident_open_incidents",
            "Incidents opened and not yet resolved, owned by this worker.",
            ["category"],
            registry=registry,
        )
        self.detection_latency_seconds = Histogram(
            "geoincident_detection_latency_seconds",
            "Wall time from the arrival of the threshold-crossing report to the emitted "
            "'opened' event.",
            buckets=DETECTION_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.event_time_lag_seconds = Gauge(
            "geoincident_event_time_lag_seconds",
            "Wall clock minus the event-time watermark.",
            registry=registry,
        )
        self.active_cells = Gauge(
            "geoincident_active_cells",
            "Grid boxes holding a report waiting to agree or an open incident.",
            registry=registry,
        )
        self.chance_groups_total = Counter(
            "geoincident_chance_groups_total",
            "Groups of agreeing reports that reached the threshold but did not stand out from "
            "the local background (not opened as incidents).",
            registry=registry,
        )
        self._chance_groups_seen: int | None = None
        self.new_reporter_bursts_total = Counter(
            "geoincident_new_reporter_bursts_total",
            "Bursts of first-time reporters on many devices at one spot within a short event "
            "time (detectors/bursts.py); one per burst. Detection is unchanged: a signal for "
            "an operator.",
            ["category"],
            registry=registry,
        )
        self._bursts: dict[str, Counter] = {}
        self.reporters_tracked = Gauge(
            "geoincident_reporters_tracked",
            "Reporters with a reputation history (faded ones are forgotten).",
            registry=registry,
        )
        self.reporters_low_weight = Gauge(
            "geoincident_reporters_low_weight",
            "Reporters whose reputation multiplies their reports' weight by less than 0.5 "
            "(as of the last sweep, every 10 minutes of event time).",
            registry=registry,
        )
        self.reporters_evicted_total = Counter(
            "geoincident_reporters_evicted_total",
            "Reporters forgotten before their history faded, to hold at most "
            "[reputation] max_reporters.",
            registry=registry,
        )
        self._reporters_evicted_seen = 0
        self.reporter_weight_mean = Gauge(
            "geoincident_reporter_weight_mean",
            "Mean reputation multiplier of the reporters tracked (as of the last sweep).",
            registry=registry,
        )
        self.state_reports = Gauge(
            "geoincident_state_reports",
            "Reports held in detector state (they live for window + allowed lateness).",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "geoincident_consumer_lag",
            "Records behind the end of each assigned partition (end offset minus position).",
            ["topic", "partition"],
            registry=registry,
        )
        self.build_info = Gauge(
            "geoincident_build_info",
            "Always 1; the version label says which build runs.",
            ["version"],
            registry=registry,
        )
        self.actions_total = Counter(
            "geoincident_actions_total",
            "Dispatcher actions read from the incident-actions topic, by action and outcome.",
            ["action", "outcome"],
            registry=registry,
        )
        self.halo_reports_total = Counter(
            "geoincident_halo_reports_total",
            "Scale-out: copies of reports owned by a neighbouring region, detected on here too "
            "(their owner counts them in geoincident_reports_total).",
            registry=registry,
        )
        self.dlq_records_total = Counter(
            "geoincident_dlq_records_total",
            "Records produced to dead-letter topics.",
            ["topic"],
            registry=registry,
        )
        self.broker_up = Gauge(
            "geoincident_broker_up",
            "1 while a bootstrap broker answers the worker's probe (a Metadata request every "
            "2 s), 0 from the second failed probe in a row until one answers again.",
            registry=registry,
        )
        self.broker_outages_total = Counter(
            "geoincident_broker_outages_total",
            "Times the broker probe went from answering to not answering (see broker_up).",
            registry=registry,
        )

        self.build_info.labels(version=version).set(1)
        self._outcomes = {o: self.reports_total.labels(outcome=o) for o in REPORT_OUTCOMES}
        self._reasons = {r: self.reports_rejected_total.labels(reason=r) for r in REJECT_REASONS}
        self._actions = {
            (a, o): self.actions_total.labels(action=a, outcome=o)
            for a in ACTIONS
            for o in ACTION_OUTCOMES
        }
        self._dlq: dict[str, Counter] = {}
        self._incidents: dict[tuple[str, str, str], Counter] = {}
        self._open_categories: set[str] = set()
        self._lag_partitions: set[tuple[str, int]] = set()
        for topic in dlq_topics:
            self._dlq_child(topic)
        for category in categories:
            self.open_incidents.labels(category=category).set(0)
            self._open_categories.add(category)
            for event in INCIDENT_EVENTS:
                for kind in INCIDENT_KINDS:
                    self._incident_child(event, kind, category)
            self._burst_child(category)

    # -- counters, per batch -------------------------------------------------------------------

    def count_outcomes(self, counts: Mapping[str, int]) -> None:
        """Add a batch's tally of report outcomes (``{"accepted": 480, "duplicate": 3}``).

        An outcome outside :data:`REPORT_OUTCOMES` raises ``KeyError``: a free-form label
        would be an unbounded series, and a typo would hide reports from the dashboards.
        """
        for outcome, n in counts.items():
            if n:
                if outcome == "halo":
                    self.halo_reports_total.inc(n)
                else:
                    self._outcomes[outcome].inc(n)

    def count_rejections(self, counts: Mapping[str, int]) -> None:
        """Add a batch's tally of rejection reasons; reasons outside the contract raise."""
        for reason, n in counts.items():
            if n:
                self._reasons[reason].inc(n)

    def count_incident(self, event: str, kind: str, category: str, n: int = 1) -> None:
        self._incident_child(event, kind, category).inc(n)

    def count_incidents(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """Add ``{(event, kind, category): n}``."""
        for (event, kind, category), n in counts.items():
            if n:
                self._incident_child(event, kind, category).inc(n)

    def count_action(self, action: str, outcome: str, n: int = 1) -> None:
        """An unknown action name is counted as ``action="other"`` (it came from outside)."""
        key = (action if action in ACTIONS else "other", outcome)
        child = self._actions.get(key)
        if child is None:
            if outcome not in ACTION_OUTCOMES:
                raise KeyError(f"unknown action outcome {outcome!r}")
            child = self._actions[key] = self.actions_total.labels(action=key[0], outcome=outcome)
        child.inc(n)

    def count_burst(self, category: str) -> None:
        """One new-reporter burst declared (a category met later gets its series then)."""
        self._burst_child(category).inc()

    def count_dlq(self, topic: str, n: int = 1) -> None:
        if n:
            self._dlq_child(topic).inc(n)

    # -- latency -------------------------------------------------------------------------------

    def observe_latency(self, seconds: float) -> None:
        """One ``opened`` incident's detection latency."""
        self.detection_latency_seconds.observe(max(0.0, seconds))

    def observe_latencies(self, seconds: Iterable[float]) -> None:
        observe = self.detection_latency_seconds.observe
        for value in seconds:
            observe(max(0.0, value))

    # -- gauges, set after a batch or on a timer --------------------------------------------

    def set_state(
        self,
        *,
        active_cells: int | None = None,
        state_reports: int | None = None,
        open_incidents: Mapping[str, int] | None = None,
        event_time_lag_s: float | None = None,
        chance_groups: int | None = None,
        reputation: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish the detector's state size; arguments left as None keep their last value.

        ``open_incidents`` is the complete per-category picture: a category missing from it
        is set to 0 (its last incident was resolved), not left at its old value.
        """
        if chance_groups is not None:
            # the detector's running count (checkpointed) becomes a counter of this process
            seen = self._chance_groups_seen
            if seen is not None and chance_groups > seen:
                self.chance_groups_total.inc(chance_groups - seen)
            self._chance_groups_seen = chance_groups
        if reputation is not None:  # detectors/reputation.py Reputation.summary()
            self.reporters_tracked.set(reputation["reporters"])
            self.reporters_low_weight.set(reputation["below_half"])
            self.reporter_weight_mean.set(reputation["mean_multiplier"])
            evicted = reputation.get("evicted", 0)
            if evicted > self._reporters_evicted_seen:
                self.reporters_evicted_total.inc(evicted - self._reporters_evicted_seen)
            self._reporters_evicted_seen = evicted
        if active_cells is not None:
            self.active_cells.set(active_cells)
        if state_reports is not None:
            self.state_reports.set(state_reports)
        if event_time_lag_s is not None:
            self.event_time_lag_seconds.set(event_time_lag_s)
        if open_incidents is not None:
            for category in self._open_categories - open_incidents.keys():
                self.open_incidents.labels(category=category).set(0)
            for category, count in open_incidents.items():
                self.open_incidents.labels(category=category).set(count)
            self._open_categories.update(open_incidents)

    def set_event_time_lag(self, seconds: float) -> None:
        self.event_time_lag_seconds.set(seconds)

    def set_consumer_lag(self, lag_records: Mapping[tuple[str, int], int]) -> None:
        """Set the lag of every partition this worker owns now: ``{(topic, partition): n}``.

        Partitions absent from ``lag_records`` (lost in a rebalance) lose their series, so a
        stale value never keeps a lag alert firing on a worker that no longer owns them.
        """
        current = set(lag_records)
        for topic, partition in self._lag_partitions - current:
            self.consumer_lag.remove(topic, str(partition))
        for (topic, partition), lag in lag_records.items():
            self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(0, lag))
        self._lag_partitions = current

    # -- the broker probe (stream/liveness.py) -------------------------------------------------

    def set_broker_up(self, up: bool) -> None:
        self.broker_up.set(1 if up else 0)

    def count_broker_outage(self) -> None:
        self.broker_outages_total.inc()

    # -- exposition ----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The ``/metrics`` response: body and content type (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry), CONTENT_TYPE

    # -- internals -----------------------------------------------------------------------------

    def _incident_child(self, event: str, kind: str, category: str) -> Counter:
        key = (event, kind, category)
        child = self._incidents.get(key)
        if child is None:
            if event not in INCIDENT_EVENTS or kind not in INCIDENT_KINDS:
                raise KeyError(f"unknown incident event/kind {event!r}/{kind!r}")
            child = self._incidents[key] = self.incidents_total.labels(
                event=event, kind=kind, category=category
            )
        return child

    def _burst_child(self, category: str) -> Counter:
        child = self._bursts.get(category)
        if child is None:
            child = self._bursts[category] = self.new_reporter_bursts_total.labels(
                category=category
            )
        return child

    def _dlq_child(self, topic: str) -> Counter:
        child = self._dlq.get(topic)
        if child is None:
            child = self._dlq[topic] = self.dlq_records_total.labels(topic=topic)
        return child
