"""Pure, synchronous decision logic: parsed reports in, incident events out.

from geoincident.detectors import Detector, DetectorParams, parse_report
detector = Detector(DetectorParams())
report = parse_report(raw_bytes, detector.params.taxonomy)
events = detector.observe(report)        # and detector.advance(watermark_ms) as time passes
"""

from geoincident.detectors.actions import Action, ActionError, parse_action
from geoincident.detectors.engine import Detector
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
    "Rejection",
    "Report",
    "Taxonomy",
    "dlq_record",
    "normalise_tag",
    "parse_action",
    "parse_report",
]
