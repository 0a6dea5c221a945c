"""The project's default taxonomy, as the simulator writes and the naive baseline reads it."""

from __future__ import annotations

from geoincident.detectors.taxonomy import DEFAULT_TAXONOMY, UNCLASSIFIED, Taxonomy

__all__ = ["CATEGORY_NAMES", "DEFAULT_TAXONOMY", "UNCLASSIFIED", "resolve_category"]

CATEGORY_NAMES: tuple[str, ...] = tuple(category.name for category in DEFAULT_TAXONOMY)

_DEFAULT = Taxonomy()


def resolve_category(report: dict) -> str:
    """CONTRACT §1 resolution of a raw report object; fields of the wrong type are ignored."""
    category = report.get("category")
    tags = report.get("tags")
    text = report.get("text")
    return _DEFAULT.resolve(
        category if isinstance(category, str) else None,
        [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else None,
        text if isinstance(text, str) else None,
    )
