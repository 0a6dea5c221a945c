"""The detector's parameters: plain typed values, built by the config loader (stream/config.py).

The defaults and range rules declared here (and on `SurgeParams`, `SignificanceParams`,
`ReputationParams`, `BurstParams`) are those
of the configuration keys: the config models are derived from these fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from geoincident.detectors.bounds import bounded, check
from geoincident.detectors.bursts import BurstParams
from geoincident.detectors.reputation import ReputationParams
from geoincident.detectors.significance import SignificanceParams
from geoincident.detectors.surge import SurgeParams
from geoincident.detectors.taxonomy import Taxonomy
from geoincident.geo.fences import Geofences


@dataclass(frozen=True, slots=True)
class CategoryParams:
    """What "enough independent reports agree" means for one category: the `[detection]` keys
    of that name are the defaults, `[detection.categories.NAME]` overrides them. The keys that
    default to None fall back to `[detection]` (`resolve_after_s`, `update_interval_s`) and
    `[detection.significance]` (`significance`) when unset; DetectorParams resolves them."""

    threshold: float = bounded(5.0, gt=0)
    window_s: float = bounded(900.0, gt=0)
    radius_m: float = bounded(250.0, gt=0, le=50_000)
    resolve_after_s: float | None = bounded(None, gt=0)
    update_interval_s: float | None = bounded(None, ge=0)
    # the whole section for this category (its `max_false_per_day` is the category's own
    # budget, not a share); `neighbourhood_m` is the stream's, whatever this says
    significance: SignificanceParams | None = None
    # derived, read for every report: a plain attribute rather than a property
    window_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check(self, "detection")
        object.__setattr__(self, "window_ms", int(self.window_s * 1000))


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """The `[detection]` section (its category keys in `defaults` and `categories`) with the
    taxonomy and the surge detector's parameters."""

    resolution: int = bounded(10, ge=0, le=15)  # an H3 resolution
    allowed_lateness_s: float = bounded(120.0, ge=0)
    resolve_after_s: float = bounded(3600.0, gt=0)
    update_interval_s: float = bounded(30.0, ge=0)
    retain_resolved_s: float = bounded(86_400.0, ge=0)
    default_accuracy_m: float = bounded(30.0, gt=0)
    accuracy_floor_m: float = bounded(3.0, gt=0)
    max_report_ids: int = bounded(200, ge=1)
    defaults: CategoryParams = CategoryParams()
    categories: Mapping[str, CategoryParams] = field(default_factory=dict)
    source_weights: Mapping[str, float] = bounded(default_factory=dict, ge=0, each=True)
    taxonomy: Taxonomy = field(default_factory=Taxonomy)
    geofences: Geofences | None = None
    surge: SurgeParams = SurgeParams()
    significance: SignificanceParams = SignificanceParams()
    reputation: ReputationParams = ReputationParams()
    # Scale-out (`[scale]`): the H3 resolution of the regions reports are routed by, or None
    # when one detector sees the whole stream. Set, incident and surge ids carry the region
    # that owns them (`inc-<region>-<hash>`), so an action can be routed to its owner.
    shard_resolution: int | None = None
    # Detectors sharing the stream (the routed topic's partitions): each gets this share of
    # the chance-incident budget, so the whole stream keeps `max_false_per_day`.
    shards: int = 1
    bursts: BurstParams = BurstParams()

    def __post_init__(self) -> None:
        check(self, "detection")

    def for_category(self, category: str) -> CategoryParams:
        return self.categories.get(category, self.defaults)

    def resolve_after_ms_of(self, category: str) -> int:
        own = self.for_category(category).resolve_after_s
        return int((self.resolve_after_s if own is None else own) * 1000)

    def update_interval_ms_of(self, category: str) -> int:
        own = self.for_category(category).update_interval_s
        return int((self.update_interval_s if own is None else own) * 1000)

    def significance_of(self, category: str) -> tuple[SignificanceParams, float]:
        """The significance settings of a category and its budget of chance incidents per
        day: its own, or an even share of `[detection.significance] max_false_per_day`; split
        evenly among `shards` detectors."""
        own = self.for_category(category).significance
        if own is not None:
            return own, own.max_false_per_day / self.shards
        shared = self.significance
        return shared, shared.max_false_per_day / max(1, len(self.taxonomy.names)) / self.shards

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
