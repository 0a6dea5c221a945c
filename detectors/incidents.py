"""Local incidents and every change of their state: open, join, throttled update, merge,
resolve, reopen, acknowledge, assign, flag; the timers that drive them and their events.

Each change happens at an event time its caller gives: the detector's clock (`clock_ms`,
None before anything was processed) or a timer's due time.
"""

from __future__ import annotations

from geoincident.detectors.actions import ActionError
from geoincident.detectors.chance import Chance
from geoincident.detectors.clusters import AccuracyWeights, Cluster, ClusterIndex
from geoincident.detectors.events import OPENED, RESOLVED, UPDATED, IncidentEvent
from geoincident.detectors.lifecycle import (
    STATUS_ACKNOWLEDGED,
    STATUS_OPEN,
    STATUS_RESOLVED,
    Incident,
    incident_id_for,
)
from geoincident.detectors.params import CategoryParams, DetectorParams
from geoincident.detectors.report import Report
from geoincident.detectors.surge import SurgeDetector
from geoincident.detectors.timefmt import format_ms
from geoincident.detectors.timers import Timers
from geoincident.geo.distance import haversine_m
from geoincident.geo.regions import region_of_point

# Timer kinds (in checkpoints)
QUIET = 0  # resolve once quiet for `resolve_after`
UPDATE = 1  # a throttled `updated`
FORGET = 2  # drop a resolved incident after `retain_resolved`


class IncidentBook:
    """The incidents remembered (open, or resolved and retained), the open ones by place."""

    def __init__(
        self,
        params: DetectorParams,
        timers: Timers,
        surge: SurgeDetector,
        chance: Chance,
        accuracy: AccuracyWeights,
        seen: dict[str, Cluster | Report | None],
    ) -> None:
        self.params = params
        self.incidents: dict[str, Incident] = {}
        self.cluster_of: dict[str, Cluster] = {}
        self.index = ClusterIndex(params.max_radius_m)  # the open incidents' clusters
        self.timers = timers
        self.surge = surge
        self.chance = chance
        self.accuracy = accuracy
        # report id -> where it is (engine.Detector's): an incident's member maps to its Cluster
        self.seen = seen

    def open_incidents(self) -> list[Incident]:
        return [incident for incident in self.incidents.values() if incident.is_open]

    def nearest(self, report: Report, radius_m: float, incomplete: bool = False) -> Cluster | None:
        """The open incident a report joins: the nearest whose centre and opening place are
        both within the radius (ties: the older). `incomplete`: only among incidents too large
        to list every member."""
        near = self.index.near(report.category, report.lat, report.lon, radius_m)
        if not near:
            return None
        kept = []
        for entry in near:
            incident = entry[1].incident
            if incomplete and incident.members_complete:
                continue
            anchor = incident.anchor
            if anchor is None or haversine_m(report.lat, report.lon, *anchor) <= radius_m:
                kept.append(entry)
        return min(kept, key=_preference)[1] if kept else None

    def event(
        self, incident: Incident, name: str, at_ms: int, trigger: str | None
    ) -> IncidentEvent:
        """An event of a local incident, carrying the open surge of its category around it."""
        lat, lon = incident.centre()
        incident.surge_id = self.surge.surge_at(incident.category, lat, lon)
        return incident.event(name, at_ms, trigger)

    # ------------------------------------------------------------------ from reports

    def open(
        self,
        members: list[tuple[Report, float]],
        validated_ms: int,
        trigger: Report,
        category_params: CategoryParams,
        clock_ms: int | None,
        significance: float = 1.0,
    ) -> list[IncidentEvent]:
        """An incident of these members (free reports no more), validated at validated_ms;
        `significance`: its confidence factor (lifecycle.confidence_of)."""
        params = self.params
        founder = members[0][0]  # members are in (event time, id) order
        category = founder.category
        shard = None
        if params.shard_resolution is not None:
            shard = region_of_point(
                founder.lat, founder.lon, params.surge.region_resolution, params.shard_resolution
            )
        incident = Incident(
            incident_id_for(category, founder.ts_ms, founder.id, shard),
            category,
            category_params.threshold,
            params.resolution,
            validated_ms,
            params.max_report_ids,
        )
        incident.seniority = (founder.ts_ms, founder.id)
        incident.significance = significance
        incident.reach_m = category_params.radius_m
        accuracy = self.accuracy
        for member, weight in members:
            incident.add(member, weight, accuracy(member.accuracy_m))
        cluster = Cluster(incident)
        seen = self.seen
        for member, weight in members:
            cluster.add(member, weight)
            seen[member.id] = cluster
        lat, lon = cluster.lat, cluster.lon
        incident.anchor = (lat, lon)
        if params.geofences is not None:
            incident.jurisdiction = params.geofences.lookup(lat, lon)
        self.index.insert(cluster)
        self.incidents[incident.incident_id] = incident
        self.cluster_of[incident.incident_id] = cluster
        emitted_ms = max(validated_ms, clock_ms or validated_ms)
        incident.last_emit_ts_ms = emitted_ms
        events = [self.event(incident, OPENED, emitted_ms, trigger.id)]
        self.timers.add(
            incident.last_ts_ms + params.resolve_after_ms_of(incident.category),
            QUIET,
            incident.incident_id,
        )
        self._merge_neighbours(cluster, trigger, events, clock_ms)
        return events

    def join(
        self, cluster: Cluster, report: Report, weight: float, clock_ms: int | None
    ) -> list[IncidentEvent]:
        """A report joins an open incident; the incident moves, and may meet another."""
        cluster.add(report, weight)
        self.seen[report.id] = cluster
        incident = cluster.incident
        events: list[IncidentEvent] = []
        if incident.add(report, weight, self.accuracy(report.accuracy_m)):
            self._updated(incident, report.id, events, clock_ms)
        cluster.lat, cluster.lon = incident.centre()
        self.index.moved(cluster)
        self._merge_neighbours(cluster, report, events, clock_ms)
        return events

    def _updated(
        self,
        incident: Incident,
        trigger: str | None,
        events: list[IncidentEvent],
        clock_ms: int | None,
    ) -> None:
        """New independent reporters: emit now, or once the update interval has passed."""
        now_ms = clock_ms or 0
        due_ms = incident.last_emit_ts_ms + self.params.update_interval_ms_of(incident.category)
        if now_ms >= due_ms:
            events.append(self.event(incident, UPDATED, now_ms, trigger))
        elif not incident.update_due:
            incident.update_due = True
            self.timers.add(due_ms, UPDATE, incident.incident_id)

    def _merge_neighbours(
        self, cluster: Cluster, report: Report, events: list[IncidentEvent], clock_ms: int | None
    ) -> None:
        """Incidents whose centres came within the radius of each other become one."""
        radius_m = self.params.for_category(cluster.category).radius_m
        for _ in range(64):  # a cascade ends quickly; the bound only guards against a cycle
            others = [
                (distance, other)
                for distance, other in self.index.near(
                    cluster.category, cluster.lat, cluster.lon, radius_m
                )
                if other is not cluster
            ]
            if not others:
                return
            other = min(others, key=_preference)[1]
            if cluster.seniority <= other.seniority:
                survivor, loser = cluster, other
            else:
                survivor, loser = other, cluster
            self._merge(survivor, loser, report, events, clock_ms)
            cluster = survivor

    def _merge(
        self,
        survivor: Cluster,
        loser: Cluster,
        report: Report,
        events: list[IncidentEvent],
        clock_ms: int | None,
    ) -> None:
        self.index.remove(loser)
        seen = self.seen
        for member in loser.members:
            survivor.add(member, loser.weight_of(member.id))
            seen[member.id] = survivor
        kept, gone = survivor.incident, loser.incident
        now_ms = clock_ms or report.ts_ms
        gone.superseded_by = kept.incident_id
        events.append(self.resolve(gone, "superseded", now_ms))
        groups_before = kept.independence.groups
        kept.absorb(gone)
        if kept.independence.groups > groups_before:
            self._updated(kept, report.id, events, clock_ms)
        kept.last_ts_ms = max(kept.last_ts_ms, gone.last_ts_ms)
        survivor.lat, survivor.lon = kept.centre()
        self.index.moved(survivor)

    # ------------------------------------------------------------------ timers

    def fire(self, kind: int, incident_id: str, due_ms: int, events: list[IncidentEvent]) -> None:
        incident = self.incidents.get(incident_id)
        if incident is None:
            return
        if kind == QUIET:
            if not incident.is_open:
                return
            quiet_until = incident.last_ts_ms + self.params.resolve_after_ms_of(incident.category)
            if quiet_until > due_ms and not self.chance.only_background(incident, due_ms):
                self.timers.add(quiet_until, QUIET, incident_id)
                return
            events.append(self.resolve(incident, "quiet", due_ms))
        elif kind == UPDATE:
            if incident.is_open and incident.update_due:
                events.append(self.event(incident, UPDATED, due_ms, None))
        elif kind == FORGET:
            if not incident.is_open and incident.resolved_ts_ms is not None:
                if incident.resolved_ts_ms + self.params.retain_resolved_ms <= due_ms:
                    del self.incidents[incident_id]
                    self.cluster_of.pop(incident_id, None)

    # ------------------------------------------------------------------ status

    def resolve(self, incident: Incident, reason: str, at_ms: int) -> IncidentEvent:
        incident.status = STATUS_RESOLVED
        incident.resolved_reason = reason
        incident.resolved_ts_ms = at_ms
        cluster = self.cluster_of.get(incident.incident_id)
        if cluster is not None:
            self.index.remove(cluster)
        self.timers.add(at_ms + self.params.retain_resolved_ms, FORGET, incident.incident_id)
        return self.event(incident, RESOLVED, at_ms, None)

    def reopen(self, incident: Incident, at_ms: int) -> IncidentEvent:
        if incident.is_open:
            raise ActionError("not_resolved", f"{incident.incident_id} is open")
        incident.status = STATUS_OPEN
        incident.resolved_reason = None
        incident.resolved_ts_ms = None
        incident.superseded_by = None
        # Quiet is counted again from the reopening, not from the last report.
        incident.last_ts_ms = max(incident.last_ts_ms, at_ms)
        cluster = self.cluster_of.get(incident.incident_id)
        if cluster is not None and not cluster.indexed:
            cluster.lat, cluster.lon = incident.centre()
            self.index.insert(cluster)
        self.timers.add(
            incident.last_ts_ms + self.params.resolve_after_ms_of(incident.category),
            QUIET,
            incident.incident_id,
        )
        return self.event(incident, UPDATED, at_ms, None)

    def acknowledge(self, incident: Incident, by: str | None, at_ms: int) -> IncidentEvent:
        incident.acknowledged_by = by
        incident.acknowledged_at = format_ms(at_ms)
        if incident.status == STATUS_OPEN:
            incident.status = STATUS_ACKNOWLEDGED
        return self.event(incident, UPDATED, at_ms, None)

    def assign(self, incident: Incident, to: str | None, at_ms: int) -> IncidentEvent:
        incident.assigned_to = to
        return self.event(incident, UPDATED, at_ms, None)

    def flag(self, incident: Incident, report_id: str, at_ms: int) -> IncidentEvent:
        """A report taken out of an incident: re-scored without it, resolved ("retracted") if
        it falls below its threshold."""
        if report_id not in incident.members:
            raise ActionError(
                "unknown_report", f"report {report_id!r} is not a member of {incident.incident_id}"
            )
        if not incident.members_complete:
            raise ActionError(
                "incident_too_large",
                f"{incident.incident_id} has too many members to re-score; block the reporter",
            )
        incident.rescore_without(report_id)
        cluster = self.cluster_of.get(incident.incident_id)
        if cluster is not None:
            cluster.remove_id(report_id)
        if incident.is_open and incident.independence.score < incident.threshold:
            return self.resolve(incident, "retracted", at_ms)
        return self.event(incident, UPDATED, at_ms, None)

    # ------------------------------------------------------------------ checkpoints

    def restore(self, incidents: dict[str, Incident]) -> dict[str, Cluster]:
        """The incidents of a checkpoint (a fresh book only); returns report id -> the cluster
        of the incident it belongs to, for the rebuild to put it back."""
        self.incidents = incidents
        restored: dict[str, Cluster] = {}
        for incident in incidents.values():
            cluster = Cluster(incident)
            self.cluster_of[incident.incident_id] = cluster
            if incident.is_open:
                self.index.insert(cluster)
            if incident.superseded_by is None:  # a superseded one's members are the survivor's
                for report_id in incident.members:
                    restored[report_id] = cluster
        return restored


def _preference(entry: tuple[float, Cluster]) -> tuple[float, int, str]:
    """Join the nearest incident; ties go to the oldest."""
    distance, cluster = entry
    return (distance, *cluster.seniority)
