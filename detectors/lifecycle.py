"""Incidents: what a validated cluster becomes, and the events that tell the world about it.

An incident is opened exactly once, updated at most once per `update_interval` when new
independent reporters join (or at once on a dispatcher action), and resolved after
`resolve_after` of event-time quiet, by a dispatcher, by a merge (`superseded`) or when flagged
reports leave it below the threshold (`retracted`). Its id is a hash of its founding report, so
the same input gives the same ids in every replay, restart and partitioning.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from geoincident.detectors.events import (
    KIND_LOCAL,
    IncidentEvent,
)
from geoincident.detectors.independence import Independence
from geoincident.detectors.report import Report
from geoincident.detectors.timefmt import format_ms
from geoincident.geo.cells import cell_of, covering_polygon
from geoincident.geo.distance import WeightedCentroid, haversine_m

STATUS_OPEN = "open"
STATUS_ACKNOWLEDGED = "acknowledged"
STATUS_RESOLVED = "resolved"

# Members remembered per incident for re-scoring after `flag_report`; beyond this an incident
# is re-scored from aggregates only and refuses to un-count single reports.
MAX_MEMBER_RECORDS = 200


def incident_id_for(
    category: str, founder_ts_ms: int, founder_id: str, shard: str | None = None
) -> str:
    """`inc-` + a hash of the founding report; with scale-out, `inc-<region>-<hash>`: the
    region that owns the incident (its founder's), so an action can be routed to it."""
    digest = hashlib.blake2b(
        f"{category}\x1f{founder_ts_ms}\x1f{founder_id}".encode(), digest_size=8
    ).hexdigest()
    return f"inc-{digest}" if shard is None else f"inc-{shard}-{digest}"


def shard_of_id(incident_id: str) -> str | None:
    """The owning region an incident or surge id carries (`inc-<region>-<hash>`), or None."""
    parts = incident_id.split("-")
    return parts[1] if len(parts) == 3 else None


def confidence_of(
    score: float,
    threshold: float,
    significance: float = 1.0,
    spread_m: float = 0.0,
    radius_m: float = 0.0,
    sources: int = 1,
) -> float:
    """How sure the detector is, in [0, 1]: the product of four factors, each monotone in one
    thing a dispatcher can see on the incident (CONTRACT §2).

    - independent weight: `1 − 2^(−2·score/threshold)`: 0.75 at the threshold, 0.94 at twice
      it; more independent voices, surer;
    - significance (given, fixed when the incident opened): `budget / (budget + F)` with F the
      chance openings per day of a group like this one where it opened: 1 where reports are
      rare, 0.5 for a group that only just stood out from a busy background;
    - spatial tightness: `1 − 0.25·min(1, spread_m / radius_m)`: 1 when the reports agree on
      a point, 0.75 when they spread over the whole radius;
    - source diversity: `1 − 0.1 / k` for k distinct sources (no source counts as one):
      0.9 from one kind of source, 0.95 from two, 0.97 from three.

    Five ordinary app reports at one spot where reports are rare: 0.75 × 1 × 1 × 0.9 = 0.675.
    """
    weight = 1.0 if threshold <= 0 else 1.0 - 2.0 ** (-2.0 * score / threshold)
    tightness = 1.0 if radius_m <= 0 else 1.0 - 0.25 * min(1.0, spread_m / radius_m)
    diversity = 1.0 - 0.1 / max(1, sources)
    return round(weight * significance * tightness * diversity, 3)


@dataclass(frozen=True, slots=True)
class MemberRecord:
    report_id: str
    reporter: str
    device: str | None
    weight: float


# Every attribute of an Incident: its __slots__, and what a checkpoint holds of it
# (stream/checkpoint.py mirrors them). Named here too because a compiled class keeps no
# __slots__ (geoincident/compiled.py).
INCIDENT_ATTRIBUTES = (
    "incident_id",
    "category",
    "kind",
    "threshold",
    "resolution",
    "status",
    "version",
    "first_ts_ms",
    "validated_ts_ms",
    "last_ts_ms",
    "centroid",
    "cells",
    "points",
    "report_count",
    "report_ids",
    "report_ids_truncated",
    "sources",
    "independence",
    "members",
    "members_complete",
    "jurisdiction",
    "last_emit_ts_ms",
    "update_due",
    "resolved_reason",
    "resolved_ts_ms",
    "acknowledged_by",
    "acknowledged_at",
    "assigned_to",
    "superseded_by",
    "history",
    "max_report_ids",
    "seniority",
    "surge_id",
    "anchor",
    "recent_ts",
    "significance",
    "reach_m",
)


class Incident:
    __slots__ = INCIDENT_ATTRIBUTES

    def __init__(
        self,
        incident_id: str,
        category: str,
        threshold: float,
        resolution: int,
        validated_ts_ms: int,
        max_report_ids: int,
    ) -> None:
        self.incident_id = incident_id
        self.category = category
        self.kind = KIND_LOCAL
        self.threshold = threshold
        self.resolution = resolution
        self.status = STATUS_OPEN
        self.version = 0
        self.first_ts_ms = validated_ts_ms
        self.validated_ts_ms = validated_ts_ms
        self.last_ts_ms = validated_ts_ms
        self.centroid = WeightedCentroid()
        self.cells: set[str] = set()
        # (lat, lon, event time, source) of each member listed in report_ids, in that order
        self.points: list[tuple[float, float, int, str | None]] = []
        self.report_count = 0
        self.report_ids: list[str] = []
        self.report_ids_truncated = False
        self.sources: dict[str, int] = {}
        self.independence = Independence()
        self.members: dict[str, MemberRecord] = {}
        self.members_complete = True
        self.jurisdiction: str | None = None
        self.last_emit_ts_ms = validated_ts_ms
        self.update_due = False
        self.resolved_reason: str | None = None
        self.resolved_ts_ms: int | None = None
        self.acknowledged_by: str | None = None
        self.acknowledged_at: str | None = None
        self.assigned_to: str | None = None
        self.superseded_by: str | None = None
        self.history: list[dict] = []
        self.max_report_ids = max_report_ids
        self.seniority: tuple[int, str] = (validated_ts_ms, incident_id)
        # the open surge of this category around the incident when it last emitted, if any
        self.surge_id: str | None = None
        # where it opened: a report joins only within the radius of this point too, so an
        # incident's reach cannot walk along a street or across a busy district
        self.anchor: tuple[float, float] | None = None
        # event times of members that joined lately (trimmed to `resolve_after` when judged):
        # is the incident still active, or only collecting the background around it?
        self.recent_ts: list[int] = []
        # the confidence factor of its significance when it opened (1: nothing like it by
        # chance), and its category's radius then: how spread its members are is read on it
        self.significance = 1.0
        self.reach_m = 0.0

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in INCIDENT_ATTRIBUTES}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    @classmethod
    def restored(cls, state: dict) -> Incident:
        """An incident with every attribute from `state` (as `__getstate__` gives it): a
        checkpoint's. (Not `__new__` and `__setstate__`: a compiled class's `__new__` runs
        `__init__`.)"""
        incident = cls(
            state["incident_id"],
            state["category"],
            state["threshold"],
            state["resolution"],
            state["validated_ts_ms"],
            state["max_report_ids"],
        )
        incident.__setstate__(state)
        return incident

    @property
    def is_open(self) -> bool:
        return self.status != STATUS_RESOLVED

    def add(self, report: Report, weight: float, position_weight: float) -> bool:
        """Count a member report; True when it brought a new independent reporter."""
        groups_before = self.independence.groups
        self.independence.add(report.reporter, report.device, weight)
        self.centroid.add(report.lat, report.lon, position_weight)
        self.cells.add(cell_of(report.lat, report.lon, self.resolution))
        self.report_count += 1
        self.recent_ts.append(report.ts_ms)
        if report.ts_ms < self.first_ts_ms:
            self.first_ts_ms = report.ts_ms
        if report.ts_ms > self.last_ts_ms:
            self.last_ts_ms = report.ts_ms
        if len(self.report_ids) < self.max_report_ids:
            self.report_ids.append(report.id)
            self.points.append((report.lat, report.lon, report.ts_ms, report.source))
        else:
            self.report_ids_truncated = True
        source = report.source or "unknown"
        self.sources[source] = self.sources.get(source, 0) + 1
        if len(self.members) < MAX_MEMBER_RECORDS:
            self.members[report.id] = MemberRecord(
                report.id, report.reporter, report.device, weight
            )
        else:
            self.members_complete = False
        return self.independence.groups > groups_before

    def absorb(self, other: Incident) -> None:
        """Take over another incident's members (a merge; `other` is superseded)."""
        self.independence.merge_from(other.independence)
        c, o = self.centroid, other.centroid
        c.x += o.x
        c.y += o.y
        c.z += o.z
        c.weight += o.weight
        self.cells |= other.cells
        self.report_count += other.report_count
        room = self.max_report_ids - len(self.report_ids)
        self.report_ids.extend(other.report_ids[:room])
        self.points.extend(other.points[:room])
        if other.report_ids_truncated or len(other.report_ids) > room:
            self.report_ids_truncated = True
        for source, count in other.sources.items():
            self.sources[source] = self.sources.get(source, 0) + count
        for report_id, record in other.members.items():
            if len(self.members) < MAX_MEMBER_RECORDS:
                self.members[report_id] = record
            else:
                self.members_complete = False
        self.members_complete = self.members_complete and other.members_complete
        self.first_ts_ms = min(self.first_ts_ms, other.first_ts_ms)
        self.last_ts_ms = max(self.last_ts_ms, other.last_ts_ms)
        self.recent_ts = sorted(self.recent_ts + other.recent_ts)

    def rescore_without(self, report_id: str) -> None:
        """Un-count one member (`flag_report`), rebuilding independence from the members kept."""
        record = self.members.pop(report_id)
        independence = Independence()
        for member in self.members.values():
            independence.add(member.reporter, member.device, member.weight)
        self.independence = independence
        self.report_count -= 1
        if report_id in self.report_ids:
            position = self.report_ids.index(report_id)
            del self.report_ids[position]
            del self.points[position]
        del record

    def centre(self) -> tuple[float, float]:
        return self.centroid.latlon()

    def event(self, name: str, emitted_ts_ms: int, trigger_report_id: str | None) -> IncidentEvent:
        self.version += 1
        self.last_emit_ts_ms = max(self.last_emit_ts_ms, emitted_ts_ms)
        self.update_due = False
        lat, lon = self.centre()
        lat = round(lat, 7)
        lon = round(lon, 7)
        radius_m = 0.0
        for point_lat, point_lon, _, _ in self.points:
            distance = haversine_m(lat, lon, point_lat, point_lon)
            if distance > radius_m:
                radius_m = distance
        score = round(self.independence.score, 6)
        return IncidentEvent(
            incident_id=self.incident_id,
            event=name,
            version=self.version,
            kind=self.kind,
            category=self.category,
            lat=lat,
            lon=lon,
            h3_cell=cell_of(lat, lon, self.resolution),
            cells=tuple(sorted(self.cells)),
            geometry=covering_polygon(self.cells),
            radius_m=round(math.ceil(radius_m * 10.0) / 10.0, 1),
            first_report_at=format_ms(self.first_ts_ms),
            validated_at=format_ms(self.validated_ts_ms),
            last_report_at=format_ms(self.last_ts_ms),
            emitted_at=format_ms(emitted_ts_ms),
            report_count=self.report_count,
            independent_reporters=self.independence.groups,
            score=score,
            confidence=confidence_of(
                score, self.threshold, self.significance, radius_m, self.reach_m, len(self.sources)
            ),
            report_ids=tuple(self.report_ids),
            members=tuple(
                {
                    "id": report_id,
                    "at": format_ms(ts_ms),
                    "lat": round(point_lat, 7),
                    "lon": round(point_lon, 7),
                    "source": source,
                }
                for report_id, (point_lat, point_lon, ts_ms, source) in zip(
                    self.report_ids, self.points, strict=True
                )
            ),
            report_ids_truncated=self.report_ids_truncated,
            sources=dict(sorted(self.sources.items())),
            jurisdiction=self.jurisdiction,
            status=self.status,
            resolved_reason=self.resolved_reason,
            acknowledged_by=self.acknowledged_by,
            acknowledged_at=self.acknowledged_at,
            assigned_to=self.assigned_to,
            superseded_by=self.superseded_by,
            surge_id=self.surge_id,
            trigger_report_id=trigger_report_id,
        )
