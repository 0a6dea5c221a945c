"""The detector's parameters: plain typed values, built by the config loader (stream/config.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from geoincident.detectors.significance import SignificanceParams
from geoincident.detectors.surge import SurgeParams
from geoincident.detectors.taxonomy import Taxonomy
from geoincident.geo.fences import Geofences


@dataclass(frozen=True, slots=True)
class CategoryParams:
    """What "enough independent reports agree" means for one category."""

    threshold: float = 5.0
    window_s: float = 900.0
    radius_m: float = 250.0
    # derived, read for every report: a plain attribute rather than a property
    window_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_ms", int(self.window_s * 1000))


@dataclass(frozen=True, slots=True)
class DetectorParams:
    resolution: int = 10
    allowed_lateness_s: float = 120.0
    resolve_after_s: float = 3600.0
    update_interval_s: float = 30.0
    retain_resolved_s: float = 86_400.0
    default_accuracy_m: float = 30.0
    accuracy_floor_m: float = 3.0
    max_report_ids: int = 200
    defaults: CategoryParams = CategoryParams()
    categories: Mapping[str, CategoryParams] = field(default_factory=dict)
    source_weights: Mapping[str, float] = field(default_factory=dict)
    taxonomy: Taxonomy = field(default_factory=Taxonomy)
    geofences: Geofences | None = None
    surge: SurgeParams = SurgeParams()
    significance: SignificanceParams = SignificanceParams()

    def for_category(self, category: str) -> CategoryParams:
        return self.categories.get(category, self.defaults)

    def source_weight(self, source: str | None) -> float:
        if source is None:
            return 1.0
        return self.source_weights.get(source, 1.0)

    @property
    def allowed_lateness_ms(self) -> int:
        return int(self.allowed_lateness_s * 1000)

    @property
    def resolve_after_ms(self) -> int:
        return int(self.resolve_after_s * 1000)

    @property
    def update_interval_ms(self) -> int:
        return int(self.update_interval_s * 1000)

    @property
    def retain_resolved_ms(self) -> int:
        return int(self.retain_resolved_s * 1000)

    @property
    def max_window_ms(self) -> int:
        windows = [self.defaults.window_ms, *(c.window_ms for c in self.categories.values())]
        return max(windows)

    @property
    def max_radius_m(self) -> float:
        radii = [self.defaults.radius_m, *(c.radius_m for c in self.categories.values())]
        return max(radii)
