"""Pure, synchronous decision logic: parsed reports in, incident events out.

from geoincident.detectors import Detector, DetectorParams, parse_report
detector = Detector(DetectorParams())
report = parse_report(raw_bytes, detector.params.taxonomy)   # or a Rejection
outcome, events = detector.observe(report)   # "accepted", "duplicate", "unclassified", "too_late"
events += detector.advance(watermark_ms)     # the driver moves event time (stream/runtime.py)
"""

from geoincident.detectors.actions import Action, ActionError, parse_action
from geoincident.detectors.engine import Detector, Observed
from geoincident.detectors.events import IncidentEvent
from geoincident.detectors.params import CategoryParams, DetectorParams
from geoincident.detectors.report import REASONS, Rejection, Report, dlq_record, parse_report
from geoincident.detectors.taxonomy import DEFAULT_TAXONOMY, Category, Taxonomy, normalise_tag

__all__ = [
    "DEFAULT_TAXONOMY",
    "REASONS",
    "Action",
    "ActionError",
    "Category",
    "CategoryParams",
    "Detector",
    "DetectorParams",
    "IncidentEvent",
    "Observed",
    "Rejection",
    "Report",
    "Taxonomy",
    "dlq_record",
    "normalise_tag",
    "parse_action",
    "parse_report",
]
