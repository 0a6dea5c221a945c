"""The one config loader: defaults <- TOML file <- GEOINCIDENT_* environment <- command-line flags.

Nested keys take a double underscore in the environment:
`GEOINCIDENT_DETECTION__THRESHOLD=4`, `GEOINCIDENT_KAFKA__BROKERS=kafka:9092`.
An unknown key or a bad value fails at start with a message that names it.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from geoincident.detectors.params import CategoryParams, DetectorParams
from geoincident.detectors.significance import SignificanceParams
from geoincident.detectors.surge import SurgeParams
from geoincident.detectors.taxonomy import DEFAULT_TAXONOMY, Category, Taxonomy
from geoincident.geo.fences import GeofenceError, Geofences

ENV_PREFIX = "GEOINCIDENT_"


class ConfigError(Exception):
    """A configuration that cannot start the service; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Section):
    brokers: str = "127.0.0.1:9092"
    client_id: str = "geoincident"
    group_id: str = "geoincident"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None

    @field_validator("brokers")
    @classmethod
    def _brokers_are_host_ports(cls, value: str) -> str:
        for broker in value.split(","):
            host, _, port = broker.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{broker!r} is not HOST:PORT")
        return value


class TopicsConfig(_Section):
    reports: str = "reports"
    incidents: str = "incidents"
    reports_dlq: str = "reports.dlq"
    actions: str = "incident-actions"
    actions_dlq: str = "incident-actions.dlq"
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)


class CategoryOverride(_Section):
    threshold: float | None = Field(default=None, gt=0)
    window_s: float | None = Field(default=None, gt=0)
    radius_m: float | None = Field(default=None, gt=0, le=50_000)


class SignificanceConfig(_Section):
    enabled: bool = True
    max_false_per_day: float = Field(default=1.0, gt=0)
    radii_m: list[float] = Field(default_factory=lambda: [50.0, 100.0, 250.0], min_length=1)
    windows_s: list[float] = Field(
        default_factory=lambda: [180.0, 300.0, 600.0, 900.0], min_length=1
    )
    neighbourhood_m: float = Field(default=1000.0, gt=0, le=50_000)
    still_active_p: float = Field(default=0.01, gt=0, lt=1)

    @field_validator("radii_m", "windows_s")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(not item > 0 for item in value):
            raise ValueError("every value must be > 0")
        return value


class DetectionConfig(_Section):
    resolution: int = Field(default=10, ge=0, le=15)
    threshold: float = Field(default=5.0, gt=0)
    window_s: float = Field(default=900.0, gt=0)
    radius_m: float = Field(default=250.0, gt=0, le=50_000)
    allowed_lateness_s: float = Field(default=120.0, ge=0)
    resolve_after_s: float = Field(default=3600.0, gt=0)
    update_interval_s: float = Field(default=30.0, ge=0)
    retain_resolved_s: float = Field(default=86_400.0, ge=0)
    default_accuracy_m: float = Field(default=30.0, gt=0)
    accuracy_floor_m: float = Field(default=3.0, gt=0)
    max_report_ids: int = Field(default=200, ge=1)
    future_tolerance_s: float = Field(default=300.0, ge=0)
    geofences: str | None = None
    source_weights: dict[str, float] = Field(default_factory=dict)
    categories: dict[str, CategoryOverride] = Field(default_factory=dict)
    significance: SignificanceConfig = SignificanceConfig()

    @field_validator("source_weights")
    @classmethod
    def _weights_not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for source, weight in value.items():
            if weight < 0:
                raise ValueError(f"source_weights.{source} must be >= 0")
        return value


class TaxonomyEntry(_Section):
    tags: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)


def _default_taxonomy() -> dict[str, TaxonomyEntry]:
    return {
        c.name: TaxonomyEntry(tags=list(c.tags), keywords=list(c.keywords))
        for c in DEFAULT_TAXONOMY
    }


class SurgeConfig(_Section):
    enabled: bool = True
    region_resolution: int = Field(default=6, ge=0, le=15)
    short_window_s: float = Field(default=300.0, gt=0)
    baseline_half_life_s: float = Field(default=21_600.0, gt=0)
    min_ratio: float = Field(default=8.0, ge=1)
    min_count: int = Field(default=30, ge=1)
    min_independent: int = Field(default=10, ge=1)
    baseline_floor_per_min: float = Field(default=0.05, gt=0)
    cooldown_s: float = Field(default=3600.0, ge=0)
    resolve_after_s: float = Field(default=1800.0, ge=0)
    update_interval_s: float = Field(default=60.0, ge=0)
    warmup_s: float = Field(default=900.0, ge=0)


class WorkerConfig(_Section):
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    store: Literal["memory", "rocksdb"] = "memory"
    data_dir: str = "./geoincident-data"
    idle_advance: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"


_file_document: ContextVar[dict[str, Any] | None] = ContextVar(
    "geoincident_config_file", default=None
)


class _FileSource(PydanticBaseSettingsSource):
    """The parsed TOML file, below the environment and the flags."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_file_document.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_document.get() or {})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    detection: DetectionConfig = DetectionConfig()
    taxonomy: dict[str, TaxonomyEntry] = Field(default_factory=_default_taxonomy)
    surge: SurgeConfig = SurgeConfig()
    worker: WorkerConfig = WorkerConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: command-line flags (init values), the environment, the TOML file.
        return (init_settings, env_settings, _FileSource(settings_cls))

    def topic_partitions(self) -> dict[str, int]:
        """Every topic the worker reads or writes, with the configured partition count."""
        topics = self.topics
        names = (topics.reports, topics.incidents, topics.reports_dlq, topics.actions)
        return {name: topics.partitions for name in (*names, topics.actions_dlq)}

    def detector_params(self) -> DetectorParams:
        detection = self.detection
        defaults = CategoryParams(detection.threshold, detection.window_s, detection.radius_m)
        names = set(self.taxonomy)
        categories: dict[str, CategoryParams] = {}
        for name, override in detection.categories.items():
            if name not in names:
                raise ConfigError(
                    f"detection.categories.{name}: not a category of the taxonomy "
                    f"({', '.join(sorted(names))})"
                )
            categories[name] = CategoryParams(
                override.threshold if override.threshold is not None else defaults.threshold,
                override.window_s if override.window_s is not None else defaults.window_s,
                override.radius_m if override.radius_m is not None else defaults.radius_m,
            )
        geofences = None
        if detection.geofences:
            try:
                geofences = Geofences.from_file(detection.geofences)
            except GeofenceError as exc:
                raise ConfigError(f"detection.geofences: {exc}") from exc
        try:
            taxonomy = Taxonomy(
                tuple(
                    Category(name, tuple(entry.tags), tuple(entry.keywords))
                    for name, entry in self.taxonomy.items()
                )
            )
        except ValueError as exc:
            raise ConfigError(f"taxonomy: {exc}") from exc
        try:
            surge = SurgeParams(**self.surge.model_dump())
            significance = SignificanceParams(
                enabled=detection.significance.enabled,
                max_false_per_day=detection.significance.max_false_per_day,
                radii_m=tuple(detection.significance.radii_m),
                windows_s=tuple(detection.significance.windows_s),
                neighbourhood_m=detection.significance.neighbourhood_m,
                still_active_p=detection.significance.still_active_p,
            )
        except ValueError as exc:  # rules across keys, checked where the values meet
            raise ConfigError(str(exc)) from None
        return DetectorParams(
            resolution=detection.resolution,
            allowed_lateness_s=detection.allowed_lateness_s,
            resolve_after_s=detection.resolve_after_s,
            update_interval_s=detection.update_interval_s,
            retain_resolved_s=detection.retain_resolved_s,
            default_accuracy_m=detection.default_accuracy_m,
            accuracy_floor_m=detection.accuracy_floor_m,
            max_report_ids=detection.max_report_ids,
            defaults=defaults,
            categories=categories,
            source_weights=dict(detection.source_weights),
            taxonomy=taxonomy,
            geofences=geofences,
            surge=surge,
            significance=significance,
        )


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return f"bad configuration ({source}): " + "; ".join(lines)


def load_settings(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Defaults, then the TOML file, then GEOINCIDENT_* variables, then `overrides` (flags).

    `overrides` maps dotted keys (`kafka.brokers`) to values; None values are ignored.
    """
    document: dict[str, Any] = {}
    source = "defaults and environment"
    if path is not None:
        source = str(path)
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown_env = _unknown_environment()
    if unknown_env:
        raise ConfigError(
            "unknown GEOINCIDENT_* environment variable(s): " + ", ".join(sorted(unknown_env))
        )
    flags: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = flags
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    token = _file_document.set(document)
    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    finally:
        _file_document.reset(token)
    settings.detector_params()  # geofences, taxonomy and category names fail here, at start
    return settings


# Flag twins that the command line reads itself (CONTRACT §5); not config keys.
FLAG_VARIABLES = {
    "CONFIG",
    "BROKERS",
    "WEB_PORT",
    "SEED",
    "HOURS",
    "RATE",
    "SPEED",
    "OUTPUT",
    "TRUTH",
    "DLQ",
    "INCIDENTS",
    "TOPIC",
    "LIVE",
    "JSON",
    "MIN_RECALL",
    "MIN_PRECISION",
    "FAMILIES",
    "BBOX",
    "START",
    "ANCHOR",
    "SIMULATE_OUTPUT",
    "REPORTS_TOPIC",
    "EVALUATE_JSON",
    "BACKGROUND_PER_MIN",
    "HOTSPOTS",
    "DAILY_CYCLE",
    "OUTBREAK",
}


def _unknown_environment() -> list[str]:
    """A misspelt GEOINCIDENT_DETECTION__TRESHOLD would otherwise be silently ignored."""
    sections = set(Settings.model_fields)
    unknown = []
    for name in os.environ:
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest in FLAG_VARIABLES:
            continue
        parts = rest.lower().split("__")
        if parts[0] not in sections:
            unknown.append(name)
            continue
        if len(parts) >= 2 and parts[0] not in ("taxonomy",):
            model = Settings.model_fields[parts[0]].annotation
            fields = getattr(model, "model_fields", {})
            if parts[1] not in fields:
                unknown.append(name)
    return unknown


def render_toml(settings: Settings) -> str:
    """The effective configuration as TOML (what `geoincident config show` prints)."""
    data = settings.model_dump(mode="json")
    if data["kafka"].get("sasl_password"):
        data["kafka"]["sasl_password"] = "***"
    lines: list[str] = []

    def emit_table(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        if scalars or not nested:
            lines.append(f"[{prefix}]")
            for key, value in scalars.items():
                if value is None:
                    lines.append(f"# {key} = (unset)")
                else:
                    lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        for key, value in nested.items():
            emit_table(f"{prefix}.{_toml_key(key)}", value)

    for section, table in data.items():
        emit_table(section, table)
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")
