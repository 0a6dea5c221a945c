"""Dispatcher actions (CONTRACT §3) on incidents and surges, and what a report counts for: its
source's weight, or nothing once its reporter or device is blocked."""

from __future__ import annotations

from geoincident.detectors.actions import Action, ActionError
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.incidents import IncidentBook
from geoincident.detectors.params import DetectorParams
from geoincident.detectors.report import Report
from geoincident.detectors.reputation import Reputation
from geoincident.detectors.surge import SurgeDetector
from geoincident.detectors.timefmt import parse_rfc3339_ms


class Dispatcher:
    """Applies actions; holds the blocks and the source weights."""

    def __init__(
        self,
        params: DetectorParams,
        book: IncidentBook,
        surge: SurgeDetector,
        reputation: Reputation,
    ) -> None:
        self.book = book
        self.surge = surge
        self.reputation = reputation
        self.reputation_on = params.reputation.enabled
        # blocked reporter/device -> what the detector had processed (drained) when the block
        # came (None: nothing yet): reports processed before it counted, and count again
        # after a restart
        self.blocked_reporters: dict[str, int | None] = {}
        self.blocked_devices: dict[str, int | None] = {}
        self.source_weights = dict(params.source_weights)

    def weight(self, report: Report, processed_before_restart: bool = False) -> float:
        """A report's weight: its source's times its reporter's reputation (at the report's
        event time), or 0 once its reporter or device is blocked. Read again after a restart,
        a report gets the weight it had when it was first processed as far as blocks go: a
        block counts only for reports past what had been processed when it came (reputation
        is the checkpoint's, see docs/design.md)."""
        if self.blocked_reporters or self.blocked_devices:
            for blocked, key in (
                (self.blocked_reporters, report.reporter),
                (self.blocked_devices, report.device),
            ):
                if key is not None and key in blocked:
                    since = blocked[key]
                    if not processed_before_restart or since is None or report.ts_ms >= since:
                        return 0.0
        source = 1.0 if report.source is None else self.source_weights.get(report.source, 1.0)
        if self.reputation_on:
            return self.reputation.weight(report.reporter, source, report.ts_ms)
        return source

    def block(self, reporter: str | None, device: str | None, drained_ms: int | None) -> None:
        """From now on, reports of this reporter/device count for nothing anywhere."""
        if reporter and reporter not in self.blocked_reporters:
            # (reputation is left alone: the weight is 0 for good, and a record made now would
            # change the weight the reports processed before the block are rebuilt with)
            self.blocked_reporters[reporter] = drained_ms
        if device and device not in self.blocked_devices:
            self.blocked_devices[device] = drained_ms

    def apply(
        self, action: Action, clock_ms: int | None, drained_ms: int | None
    ) -> list[IncidentEvent]:
        """Raises ActionError for unknown incidents/reports and what does not apply."""
        at_ms = parse_rfc3339_ms(action.at) if action.at else (clock_ms or 0)
        if action.action == "block":
            self.block(action.reporter, action.device, drained_ms)
            return []
        book = self.book
        incident = book.incidents.get(action.incident_id)
        if incident is None and self.surge.is_open(action.incident_id):
            if action.action == "resolve":
                return [self.surge.resolve(action.incident_id, at_ms, "dispatcher")]
            raise ActionError(
                "unsupported_for_surge", f"{action.action} does not apply to a surge; resolve does"
            )
        if incident is None:
            raise ActionError("unknown_incident", f"no incident {action.incident_id!r}")
        incident.history.append(action.to_dict())
        kind = action.action
        if kind == "ack":
            return [book.acknowledge(incident, action.by, at_ms)]
        if kind == "assign":
            return [book.assign(incident, action.to, at_ms)]
        if kind == "resolve":
            if not incident.is_open:
                raise ActionError("already_resolved", f"{incident.incident_id} is resolved")
            return [book.resolve(incident, "dispatcher", at_ms)]
        if kind == "reopen":
            return [book.reopen(incident, at_ms)]
        if kind == "flag_report":
            member = incident.members.get(action.report_id or "")
            events = [book.flag(incident, action.report_id or "", at_ms)]
            if member is not None:  # flagged: their next reports count for less at once
                self.reputation.flagged(member.reporter, at_ms)
            return events
        raise ActionError("bad_action", f"unknown action {kind!r}")
