"""The one config loader: defaults <- TOML file <- GEOINCIDENT_* environment <- command-line flags.

Nested keys take a double underscore in the environment:
`GEOINCIDENT_DETECTION__THRESHOLD=4`, `GEOINCIDENT_KAFKA__BROKERS=kafka:9092`.
An unknown key or a bad value fails at start with a message that names it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from geoincident.detectors.bounds import Bounds, bounds_of
from geoincident.detectors.bursts import BurstParams
from geoincident.detectors.params import CategoryParams, DetectorParams
from geoincident.detectors.reputation import ReputationParams
from geoincident.detectors.significance import SignificanceParams
from geoincident.detectors.surge import SurgeParams
from geoincident.detectors.taxonomy import (
    DEFAULT_MAX_REPORT_BYTES,
    DEFAULT_TAXONOMY,
    Category,
    Taxonomy,
)
from geoincident.files import MAX_SECRET_FILE_BYTES, MIB, FileTooLarge, read_bounded_text
from geoincident.geo.fences import GeofenceError, Geofences
from geoincident.geo.regions import RegionMap

ENV_PREFIX = "GEOINCIDENT_"
# A configuration file is a few kilobytes; a path to something else fails at load.
MAX_CONFIG_BYTES = 1 * MIB


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
    # the password: here (or GEOINCIDENT_KAFKA__SASL_PASSWORD), or in a file; never printed
    sasl_password: SecretStr | None = None
    sasl_password_file: str | None = None
    # TLS (security_protocol SSL or SASL_SSL): the CA that signed the brokers' certificates
    # (default: the system's), and for mutual TLS the client's certificate (PEM, which may
    # hold the key too) and private key, whose password is here or in a file
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_key_password_file: str | None = None
    # the broker's certificate must name the host connected to (the chain is checked anyway)
    ssl_check_hostname: bool = True
    # SASL over an unencrypted connection sends the password (PLAIN) in clear: refused unless
    # the operator says so
    allow_plaintext_sasl: bool = False

    @model_validator(mode="after")
    def _sasl_is_never_silently_plaintext(self) -> KafkaConfig:
        protocol, mechanism = self.security_protocol, self.sasl_mechanism
        if mechanism and not protocol.startswith("SASL_"):
            raise ValueError(
                f"kafka.sasl_mechanism {mechanism} needs kafka.security_protocol SASL_SSL (or "
                f"SASL_PLAINTEXT with kafka.allow_plaintext_sasl = true), not {protocol}: the "
                "client would connect without authenticating"
            )
        if protocol.startswith("SASL_") and not mechanism:
            raise ValueError(f"kafka.security_protocol {protocol} needs kafka.sasl_mechanism")
        if protocol == "SASL_PLAINTEXT" and not self.allow_plaintext_sasl:
            raise ValueError(
                "kafka.security_protocol SASL_PLAINTEXT sends the SASL credentials unencrypted: "
                "use SASL_SSL, or set kafka.allow_plaintext_sasl = true"
            )
        if mechanism and not self.sasl_username:
            raise ValueError("kafka.sasl_username is needed with kafka.sasl_mechanism")
        if self.sasl_password and self.sasl_password_file:
            raise ValueError("kafka.sasl_password and kafka.sasl_password_file: set one")
        if mechanism and not (self.sasl_password or self.sasl_password_file):
            raise ValueError(
                "kafka.sasl_password (or kafka.sasl_password_file) is needed with "
                "kafka.sasl_mechanism"
            )
        if not mechanism:
            for key in ("sasl_username", "sasl_password", "sasl_password_file"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"kafka.{key} is set but kafka.sasl_mechanism is not: the client would "
                        "not authenticate"
                    )
        return self

    @model_validator(mode="after")
    def _tls_settings_are_used(self) -> KafkaConfig:
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if not tls:
            for key in _TLS_KEYS:
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"kafka.{key} is set but kafka.security_protocol "
                        f"{self.security_protocol} does not use TLS (SSL or SASL_SSL)"
                    )
            if not self.ssl_check_hostname:
                raise ValueError(
                    "kafka.ssl_check_hostname = false but kafka.security_protocol "
                    f"{self.security_protocol} does not use TLS (SSL or SASL_SSL)"
                )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("kafka.ssl_keyfile needs kafka.ssl_certfile (the client certificate)")
        if self.ssl_key_password and self.ssl_key_password_file:
            raise ValueError("kafka.ssl_key_password and kafka.ssl_key_password_file: set one")
        if (self.ssl_key_password or self.ssl_key_password_file) and not self.ssl_certfile:
            raise ValueError(
                "kafka.ssl_key_password(_file) needs kafka.ssl_certfile (and the key it unlocks)"
            )
        return self

    def password(self) -> str | None:
        """The SASL password, from `sasl_password_file` when set (read at each connect, so a
        rotated file is picked up by a restart)."""
        return _secret(self.sasl_password, self.sasl_password_file, "kafka.sasl_password_file")

    def key_password(self) -> str | None:
        """The password of the client's private key, from `ssl_key_password_file` when set."""
        return _secret(
            self.ssl_key_password, self.ssl_key_password_file, "kafka.ssl_key_password_file"
        )

    @field_validator("brokers")
    @classmethod
    def _brokers_are_host_ports(cls, value: str) -> str:
        for broker in value.split(","):
            host, _, port = broker.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{broker!r} is not HOST:PORT")
        return value


_TLS_KEYS = (
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_key_password",
    "ssl_key_password_file",
)


def _secret(value: SecretStr | None, path: str | None, key: str) -> str | None:
    """A secret given inline or in a file (its content, surrounding whitespace removed)."""
    if not path:
        return None if value is None else value.get_secret_value()
    try:
        text = read_bounded_text(path, MAX_SECRET_FILE_BYTES)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc}") from None
    return text.strip()


class TopicsConfig(_Section):
    reports: str = "reports"
    incidents: str = "incidents"
    reports_dlq: str = "reports.dlq"
    actions: str = "incident-actions"
    actions_dlq: str = "incident-actions.dlq"
    # internal, with [scale]: reports (and actions) re-keyed by region
    routed: str = "geoincident-routed"
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)


def _config_fields(params: type, *names: str, optional: bool = False) -> dict[str, Any]:
    """Config keys for fields of a detector parameters dataclass (`names`, or all it takes),
    with the field's type, default and range rule (`detectors/bounds.py`): each written once,
    on the dataclass. `optional`: every key defaults to None (unset)."""
    hints = get_type_hints(params)
    rules = bounds_of(params)
    by_name = {f.name: f for f in dataclasses.fields(params) if f.init}
    keys: dict[str, Any] = {}
    for name in names or by_name:
        spec, hint = by_name[name], hints[name]
        rule, limits = rules.get(name), {}
        if rule is not None and rule.each:
            hint = Annotated[hint, AfterValidator(_items_within(rule))]
        elif rule is not None:
            limits = rule.limits()  # pydantic's own constraints, its own messages
        if optional:
            keys[name] = (hint | None, Field(default=None, **limits))
        elif spec.default_factory is not dataclasses.MISSING:
            keys[name] = (hint, Field(default_factory=spec.default_factory, **limits))
        else:
            keys[name] = (hint, Field(default=spec.default, **limits))
    return keys


def _items_within(rule: Bounds) -> Callable[[Any], Any]:
    def validate(value: Any) -> Any:
        if not rule.admits(value):
            raise ValueError(f"must be {rule}, not {value!r}")
        return value

    return validate


SignificanceConfig = create_model(
    "SignificanceConfig", __base__=_Section, **_config_fields(SignificanceParams)
)
BurstsConfig = create_model("BurstsConfig", __base__=_Section, **_config_fields(BurstParams))
# The detection rules of one category. `neighbourhood_m` is not one of them: the background
# is counted on one grid for the whole stream.
_CATEGORY_RULES = ("threshold", "window_s", "radius_m", "resolve_after_s", "update_interval_s")
_CATEGORY_SIGNIFICANCE = tuple(
    f.name for f in dataclasses.fields(SignificanceParams) if f.name != "neighbourhood_m"
)
# [detection.categories.NAME]: every detection rule, each unset (falling back to [detection]
# and [detection.significance]) unless given.
CategoryOverride = create_model(
    "CategoryOverride",
    __base__=_Section,
    **_config_fields(CategoryParams, *_CATEGORY_RULES, optional=True),
    significance=(
        create_model(
            "CategorySignificance",
            __base__=_Section,
            **_config_fields(SignificanceParams, *_CATEGORY_SIGNIFICANCE, optional=True),
        )
        | None,
        None,
    ),
)
DetectionConfig = create_model(
    "DetectionConfig",
    __base__=_Section,
    **_config_fields(DetectorParams, "resolution"),
    **_config_fields(CategoryParams, "threshold", "window_s", "radius_m"),  # every category's
    **_config_fields(
        DetectorParams,
        "allowed_lateness_s",
        "resolve_after_s",
        "update_interval_s",
        "retain_resolved_s",
        "default_accuracy_m",
        "accuracy_floor_m",
        "max_report_ids",
    ),
    # The worker's, not the detector's: how far past the wall clock a report may be dated.
    future_tolerance_s=(float, Field(default=300.0, ge=0)),
    # The largest report value read; a larger one goes to the DLQ as too_large, unparsed.
    max_report_bytes=(int, Field(default=DEFAULT_MAX_REPORT_BYTES, ge=1024, le=8 * MIB)),
    geofences=(str | None, None),  # a GeoJSON file: DetectorParams.geofences
    **_config_fields(DetectorParams, "source_weights"),
    categories=(dict[str, CategoryOverride], Field(default_factory=dict)),
    significance=(SignificanceConfig, SignificanceConfig()),
    bursts=(BurstsConfig, BurstsConfig()),
)


class TaxonomyEntry(_Section):
    tags: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)


def _default_taxonomy() -> dict[str, TaxonomyEntry]:
    return {
        c.name: TaxonomyEntry(tags=list(c.tags), keywords=list(c.keywords))
        for c in DEFAULT_TAXONOMY
    }


SurgeConfig = create_model("SurgeConfig", __base__=_Section, **_config_fields(SurgeParams))
ReputationConfig = create_model(
    "ReputationConfig", __base__=_Section, **_config_fields(ReputationParams)
)


class ScaleConfig(_Section):
    """`[scale]`: run detection in several processes. Unset `region_resolution`: one worker
    process detects on the whole stream (a second process in its group waits). Set: reports
    are re-keyed by the H3 region at that resolution into the `topics.routed` topic, and each
    of its `partitions` has its own detector, so processes share the work (stream/routing.py)."""

    region_resolution: int | None = Field(default=None, ge=0, le=15)
    # partitions of the routed topic: the most processes that can share the detection
    partitions: int | None = Field(default=None, ge=1, le=1024)  # default: topics.partitions
    # how far past a region's border its detector sees (default: 2 x the largest radius +
    # 1.5 x significance.neighbourhood_m, what a decision near the border can depend on)
    halo_m: float | None = Field(default=None, ge=0, le=50_000)


class WorkerConfig(_Section):
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    store: Literal["memory", "rocksdb"] = "memory"
    data_dir: str = "./geoincident-data"
    idle_advance: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ConsoleConfig(_Section):
    """`geoincident console`: the dispatchers' web page and its JSON API."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Bearer tokens that may act (one per line; `#` comments); GEOINCIDENT_CONSOLE_TOKEN adds
    # one. No token at all: every action is refused.
    token_file: str | None = None
    # true: reading (the page, the API, the feeds) needs a token too
    read_protected: bool = False
    # a street basemap, e.g. "https://tile.example.org/{z}/{x}/{y}.png"; none: the offline map
    tile_url: str | None = None
    consumer_group: str = "geoincident-console"


class WebhookConfig(_Section):
    """One receiver of incident events, and which events go to it."""

    name: str
    url: str
    format: Literal["json", "slack"] = "json"
    # each empty list: every value; `surges` is where surge events go, and whether the local
    # incidents of an open surge go too ("separately": yes, "no": filed under their surge)
    kinds: list[Literal["local", "surge"]] = Field(default_factory=list)
    events: list[Literal["opened", "updated", "resolved"]] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    jurisdictions: list[str] = Field(default_factory=list)
    surge_members: Literal["separately", "no"] = "no"


class Open311Config(_Section):
    """A city's GeoReport v2 endpoint: one service request per validated incident."""

    endpoint: str  # the base URL; requests go to <endpoint>/requests.json
    jurisdiction_id: str | None = None
    api_key_file: str | None = None  # or GEOINCIDENT_OPEN311_API_KEY
    service_codes: dict[str, str] = Field(default_factory=dict)  # category -> service_code


class NotifyConfig(_Section):
    """`geoincident notify`: incident events pushed to where dispatchers work."""

    consumer_group: str = "geoincident-notify"
    state_dir: str = "./geoincident-notify"
    timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    open311: Open311Config | None = None


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
    reputation: ReputationConfig = ReputationConfig()
    scale: ScaleConfig = ScaleConfig()
    worker: WorkerConfig = WorkerConfig()
    console: ConsoleConfig = ConsoleConfig()
    notify: NotifyConfig = NotifyConfig()

    @field_validator("taxonomy", mode="before")
    @classmethod
    def _extend_the_default_taxonomy(cls, value: Any) -> Any:
        """`[taxonomy.X]` entries add categories to the default taxonomy (an entry named like
        a default category replaces its tags and keywords); `[taxonomy] replace = true`
        makes them the whole taxonomy."""
        if not isinstance(value, dict):
            return value  # pydantic names the type error
        entries = dict(value)
        replace = entries.pop("replace", False)
        if isinstance(replace, str) and replace.lower() in ("true", "false", "1", "0"):
            replace = replace.lower() in ("true", "1")  # from the environment
        if not isinstance(replace, bool):
            raise ValueError(f"taxonomy.replace must be true or false, not {replace!r}")
        if replace:
            if not entries:
                raise ValueError("taxonomy.replace = true needs at least one [taxonomy.X] entry")
            return entries
        return {**_default_taxonomy(), **entries}

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
        found = {name: topics.partitions for name in (*names, topics.actions_dlq)}
        if self.scaled_out:
            found[topics.routed] = self.routed_partitions
        return found

    @property
    def scaled_out(self) -> bool:
        return self.scale.region_resolution is not None

    @property
    def routed_partitions(self) -> int:
        return self.scale.partitions or self.topics.partitions

    def region_map(self, params: DetectorParams | None = None) -> RegionMap | None:
        """The routing of `[scale]`, or None when detection is not scaled out."""
        resolution = self.scale.region_resolution
        if resolution is None:
            return None
        from geoincident.stream.routing import halo_m_for

        params = params or self.detector_params()
        try:
            return RegionMap(
                resolution=resolution,
                cell_resolution=params.surge.region_resolution,
                halo_m=self.scale.halo_m if self.scale.halo_m is not None else halo_m_for(params),
                partitions=self.routed_partitions,
            )
        except ValueError as exc:
            raise ConfigError(f"scale.region_resolution: {exc}") from None

    def detector_params(self) -> DetectorParams:
        """The detector's parameters; ConfigError (naming the key) for what the config models
        cannot check by themselves: category names, geofences, the taxonomy, rules across keys."""
        detection = self.detection
        names = set(self.taxonomy)
        for name in detection.categories:
            if name not in names:
                raise ConfigError(
                    f"detection.categories.{name}: not a category of the taxonomy "
                    f"({', '.join(sorted(names))})"
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
                ),
                max_report_bytes=detection.max_report_bytes,
            )
        except ValueError as exc:
            raise ConfigError(f"taxonomy: {exc}") from exc
        try:  # the dataclasses check their rules again, and those across keys
            defaults = CategoryParams(
                threshold=detection.threshold,
                window_s=detection.window_s,
                radius_m=detection.radius_m,
            )
            significance = SignificanceParams(**detection.significance.model_dump())
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
                categories={
                    name: _category_rules(defaults, significance, override)
                    for name, override in detection.categories.items()
                },
                source_weights=dict(detection.source_weights),
                taxonomy=taxonomy,
                geofences=geofences,
                surge=SurgeParams(**self.surge.model_dump()),
                significance=significance,
                reputation=ReputationParams(**self.reputation.model_dump()),
                shard_resolution=self.scale.region_resolution,
                shards=self.routed_partitions if self.scaled_out else 1,
                bursts=BurstParams(**detection.bursts.model_dump()),
            )
        except ValueError as exc:  # its message names the key
            raise ConfigError(str(exc)) from None


def _category_rules(
    defaults: CategoryParams, significance: SignificanceParams, override: Any
) -> CategoryParams:
    """A category's rules: its keys over the defaults; a `significance` table of its own makes
    the whole section its own, the keys it leaves unset taken from [detection.significance]
    (its `max_false_per_day` then being the category's budget, not a share)."""
    rules = override.model_dump(exclude_none=True)
    own = rules.pop("significance", None)
    if own is not None:
        rules["significance"] = dataclasses.replace(significance, **own)
    return dataclasses.replace(defaults, **rules)


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
            document = tomllib.loads(read_bounded_text(path, MAX_CONFIG_BYTES))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except FileTooLarge:
            raise ConfigError(
                f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes: not a "
                "configuration file?"
            ) from None
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
    params = settings.detector_params()  # geofences, taxonomy, category names fail here, at start
    settings.region_map(params)  # and [scale] against the surge cells
    return settings


# Flag twins that the command line reads itself (CONTRACT §5); not config keys.
FLAG_VARIABLES = {
    "CONFIG",
    "CONSOLE_TOKEN",
    "OPEN311_API_KEY",
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


# Read by the package as it is imported, not by the configuration: PURE_PYTHON runs the
# detector core from its Python sources where it was compiled (geoincident/compiled.py).
PACKAGE_VARIABLES = {"PURE_PYTHON"}


def _unknown_environment() -> list[str]:
    """A misspelt GEOINCIDENT_DETECTION__TRESHOLD would otherwise be silently ignored."""
    sections = set(Settings.model_fields)
    unknown = []
    for name in os.environ:
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest in FLAG_VARIABLES or rest in PACKAGE_VARIABLES:
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
    # the taxonomy shown is the whole effective one: loading this output gives it back
    data["taxonomy"] = {"replace": True, **data["taxonomy"]}
    # so are the rules of every category, each key set (a category's max_false_per_day is its
    # budget: its own, or its share of [detection.significance]'s)
    data["detection"]["categories"] = _effective_categories(settings.detector_params())
    for secret in ("sasl_password", "ssl_key_password"):
        if data["kafka"].get(secret):
            data["kafka"][secret] = "***"
    lines: list[str] = []

    def is_tables(value: Any) -> bool:  # a non-empty list of tables: [[prefix.key]] each
        return isinstance(value, list) and bool(value) and isinstance(value[0], dict)

    def emit_table(prefix: str, table: dict[str, Any], header: str = "[{}]") -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and not is_tables(v)}
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        arrays = {k: v for k, v in table.items() if is_tables(v)}
        if scalars or not (nested or arrays):
            lines.append(header.format(prefix))
            for key, value in scalars.items():
                if value is None:
                    lines.append(f"# {key} = (unset)")
                else:
                    lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        for key, value in nested.items():
            emit_table(f"{prefix}.{_toml_key(key)}", value)
        for key, items in arrays.items():
            for item in items:
                emit_table(f"{prefix}.{_toml_key(key)}", item, "[[{}]]")

    for section, table in data.items():
        emit_table(section, table)
    return "\n".join(lines)


def _effective_categories(params: DetectorParams) -> dict[str, Any]:
    rules = {}
    for name in params.taxonomy.names:
        category = params.for_category(name)
        significance, budget = params.significance_of(name)
        own = dataclasses.asdict(significance)
        own["max_false_per_day"] = budget
        rules[name] = {
            "threshold": category.threshold,
            "window_s": category.window_s,
            "radius_m": category.radius_m,
            "resolve_after_s": params.resolve_after_ms_of(name) / 1000.0,
            "update_interval_s": params.update_interval_ms_of(name) / 1000.0,
            "significance": {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in own.items()
                if key in _CATEGORY_SIGNIFICANCE
            },
        }
    return rules


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
