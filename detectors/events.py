"""Incident events (CONTRACT §2) and their JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

SCHEMA_VERSION = 1

OPENED = "opened"
UPDATED = "updated"
RESOLVED = "resolved"

KIND_LOCAL = "local"
KIND_SURGE = "surge"


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    incident_id: str
    event: str
    version: int
    kind: str
    category: str
    lat: float
    lon: float
    h3_cell: str
    cells: tuple[str, ...]
    geometry: dict[str, Any]
    radius_m: float
    first_report_at: str
    validated_at: str
    last_report_at: str
    emitted_at: str
    report_count: int
    independent_reporters: int
    score: float
    confidence: float
    report_ids: tuple[str, ...]
    report_ids_truncated: bool
    sources: dict[str, int]
    jurisdiction: str | None
    status: str
    resolved_reason: str | None = None
    surge: dict[str, Any] | None = None
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None
    assigned_to: str | None = None
    superseded_by: str | None = None
    # Local incidents: each member listed in report_ids, in that order: its id, event time,
    # position and source (a dispatcher sees where and when the reports came from).
    members: tuple[dict[str, Any], ...] = ()
    # A local incident inside an open surge of its category: the surge's incident_id
    # (always present on local incidents, null outside any surge; absent on surges).
    surge_id: str | None = None
    # Not part of the JSON: the id of the report whose processing produced this event, so the
    # worker can measure detection latency from that report's arrival.
    trigger_report_id: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "incident_id": self.incident_id,
            "event": self.event,
            "version": self.version,
            "kind": self.kind,
            "category": self.category,
            "lat": self.lat,
            "lon": self.lon,
            "h3_cell": self.h3_cell,
            "cells": list(self.cells),
            "geometry": self.geometry,
            "radius_m": self.radius_m,
            "first_report_at": self.first_report_at,
            "validated_at": self.validated_at,
            "last_report_at": self.last_report_at,
            "emitted_at": self.emitted_at,
            "report_count": self.report_count,
            "independent_reporters": self.independent_reporters,
            "score": self.score,
            "confidence": self.confidence,
            "report_ids": list(self.report_ids),
        }
        if self.report_ids_truncated:
            body["report_ids_truncated"] = True
        if self.kind == KIND_LOCAL:
            body["members"] = list(self.members)
        body["sources"] = self.sources
        body["jurisdiction"] = self.jurisdiction
        body["status"] = self.status
        if self.kind == KIND_LOCAL:
            body["surge_id"] = self.surge_id
        for name in (
            "resolved_reason",
            "surge",
            "acknowledged_by",
            "acknowledged_at",
            "assigned_to",
            "superseded_by",
        ):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return body

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())
