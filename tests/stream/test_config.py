import dataclasses
import json
import os
import subprocess
import sys

import pytest

from geoincident.detectors.bounds import bounds_of
from geoincident.detectors.bursts import BurstParams
from geoincident.detectors.params import CategoryParams, DetectorParams
from geoincident.detectors.reputation import ReputationParams
from geoincident.detectors.significance import SignificanceParams
from geoincident.detectors.surge import SurgeParams
from geoincident.stream.config import ConfigError, Settings, load_settings


def write(tmp_path, text):
    path = tmp_path / "geoincident.toml"
    path.write_text(text)
    return path


def test_every_key_has_a_default():
    settings = load_settings()
    params = settings.detector_params()
    assert params.defaults.threshold == 5.0
    assert params.defaults.window_s == 900 and params.defaults.radius_m == 250
    assert params.allowed_lateness_s == 120 and params.resolve_after_s == 3600
    assert params.update_interval_s == 30 and params.resolution == 10
    assert params.source_weight("staff") == 1.0
    assert "streetlight_out" in params.taxonomy.names


def test_per_category_overrides_keep_the_other_defaults(tmp_path):
    path = write(
        tmp_path,
        "[detection]\nthreshold = 4\n[detection.categories.gas_leak]\nthreshold = 2\n"
        "radius_m = 400\n[detection.source_weights]\nstaff = 5.0\n",
    )
    params = load_settings(path).detector_params()
    assert params.for_category("gas_leak").threshold == 2
    assert params.for_category("gas_leak").radius_m == 400
    assert params.for_category("gas_leak").window_s == 900
    assert params.for_category("pothole").threshold == 4
    assert params.source_weight("staff") == 5.0


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "[detection]\nthreshold = 4\nwindow_s = 600\n")
    monkeypatch.setenv("GEOINCIDENT_DETECTION__THRESHOLD", "6")
    monkeypatch.setenv("GEOINCIDENT_KAFKA__BROKERS", "kafka:9092")
    settings = load_settings(path)
    assert settings.detection.threshold == 6
    assert settings.detection.window_s == 600  # the file's other keys stay
    assert settings.kafka.brokers == "kafka:9092"


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("GEOINCIDENT_KAFKA__BROKERS", "kafka:9092")
    settings = load_settings(None, {"kafka.brokers": "127.0.0.1:19092"})
    assert settings.kafka.brokers == "127.0.0.1:19092"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[detection]\nthresold = 3\n", "detection.thresold"),
        ("[detection]\nthreshold = -1\n", "detection.threshold"),
        ("[detection]\nresolution = 16\n", "detection.resolution"),
        ("[kafka]\nbrokers = 'nohost'\n", "kafka.brokers"),
        ("[topics]\npartitions = 'many'\n", "topics.partitions"),
        ("[detection.categories.noise]\nthreshold = 3\n", "detection.categories.noise"),
        ("[detection.source_weights]\nstaff = -2\n", "detection.source_weights"),
        ("[surprise]\nx = 1\n", "surprise"),
        ("[detection]\ngeofences = 'missing.geojson'\n", "detection.geofences"),
    ],
)
def test_a_bad_key_or_value_fails_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(write(tmp_path, text))


def test_a_misspelt_environment_variable_fails_naming_it(monkeypatch):
    monkeypatch.setenv("GEOINCIDENT_DETECTION__TRESHOLD", "3")
    with pytest.raises(ConfigError, match="GEOINCIDENT_DETECTION__TRESHOLD"):
        load_settings()


def test_invalid_toml_fails_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[detection\n"))


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "geoincident.stream.cli", *args],
        capture_output=True,
        text=True,
        env=env,
    )


def test_config_show_prints_the_effective_config_that_loads_again(tmp_path):
    path = write(tmp_path, "[detection.categories.pothole]\nthreshold = 3\n")
    result = _cli("config", "show", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "[detection.categories.pothole]" in result.stdout
    shown = tmp_path / "shown.toml"
    shown.write_text(result.stdout)
    assert load_settings(shown).detector_params().for_category("pothole").threshold == 3


def test_a_rule_across_keys_fails_at_start_naming_them(monkeypatch):
    monkeypatch.setenv("GEOINCIDENT_SURGE__MIN_COUNT", "20")
    with pytest.raises(ConfigError, match="surge.min_count must be at least 3 x surge.min_ratio"):
        load_settings()


def test_cli_exits_2_naming_the_bad_key(tmp_path):
    path = write(tmp_path, "[worker]\nweb_port = 70000\n")
    result = _cli("config", "show", "--config", str(path))
    assert result.returncode == 2
    assert "worker.web_port" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_usage_error_exits_2():
    result = _cli("replay")
    assert result.returncode == 2
    assert "INPUT" in result.stderr


# One source for defaults and rules: the detector's dataclasses. The config must agree with them.


def _differences(actual, expected, prefix=""):
    """Fields (nested dataclasses field by field) whose value or type differ."""
    found = []
    for spec in dataclasses.fields(expected):
        got, want = getattr(actual, spec.name), getattr(expected, spec.name)
        if dataclasses.is_dataclass(want) and dataclasses.is_dataclass(got):
            found += _differences(got, want, f"{prefix}{spec.name}.")
        elif got != want or type(got) is not type(want):
            found.append(f"{prefix}{spec.name}: config {got!r}, detector {want!r}")
    return found


def test_the_config_defaults_are_the_detector_defaults():
    assert _differences(Settings().detector_params(), DetectorParams()) == []
    assert _differences(load_settings().detector_params(), DetectorParams()) == []
    # ... and the comparison sees a nested value that differs
    changed = load_settings(None, {"surge.min_ratio": 9.0}).detector_params()
    assert _differences(changed, DetectorParams()) == ["surge.min_ratio: config 9.0, detector 8.0"]


def _keys(section):
    return set(Settings.model_fields[section].annotation.model_fields)


def _init_fields(params):
    return {spec.name for spec in dataclasses.fields(params) if spec.init}


def _detection_keys(key):
    annotation = Settings.model_fields["detection"].annotation.model_fields[key].annotation
    if key == "categories":  # dict[str, CategoryOverride]
        annotation = annotation.__args__[1]
    return set(annotation.model_fields)


def test_every_detector_parameter_is_a_config_key():
    detection = _keys("detection")
    significance = _detection_keys("significance")
    categories = _detection_keys("categories")
    assert _keys("surge") == _init_fields(SurgeParams)
    assert significance == _init_fields(SignificanceParams)
    assert categories == _init_fields(CategoryParams)
    # every rule can be set per category; the unset ones fall back to [detection] and its
    # significance section (the background's neighbourhood is the stream's)
    assert categories - {"significance"} <= detection
    own_significance = Settings.model_fields["detection"].annotation.model_fields["categories"]
    own_significance = own_significance.annotation.__args__[1].model_fields["significance"]
    own_significance = own_significance.annotation.__args__[0]  # CategorySignificance | None
    assert set(own_significance.model_fields) == significance - {"neighbourhood_m"}
    # set in code rather than by a [detection] key of their name:
    assert _init_fields(DetectorParams) - detection == {
        "defaults",
        "taxonomy",
        "surge",
        "reputation",
        "shard_resolution",  # [scale] region_resolution
        "shards",  # [scale] partitions
    }
    assert _keys("reputation") == _init_fields(ReputationParams)
    assert _detection_keys("bursts") == _init_fields(BurstParams)


def _changed(value):
    """A valid value other than the default."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, tuple):
        return tuple(item / 2 for item in value)
    return {"staff": 2.0}  # source_weights


def _config_keys_of_params():
    """(config key, default parameters, where the loaded value lands) for every parameter."""
    not_keys = {"categories", "significance", "geofences", "defaults", "taxonomy", "surge"}
    not_keys |= {"reputation", "bursts"}
    not_keys |= {"shard_resolution", "shards"}  # from [scale]: see the scale tests
    for name in _init_fields(SurgeParams):
        yield f"surge.{name}", SurgeParams(), lambda p, n=name: getattr(p.surge, n)
    for name in _init_fields(ReputationParams):
        yield f"reputation.{name}", ReputationParams(), lambda p, n=name: getattr(p.reputation, n)
    for name in _init_fields(BurstParams):
        yield f"detection.bursts.{name}", BurstParams(), lambda p, n=name: getattr(p.bursts, n)
    for name in _init_fields(SignificanceParams):
        yield (
            f"detection.significance.{name}",
            SignificanceParams(),
            (lambda p, n=name: getattr(p.significance, n)),
        )
    for name in _init_fields(CategoryParams):
        if getattr(CategoryParams(), name) is not None:  # None: falls back to DetectorParams'
            yield f"detection.{name}", CategoryParams(), lambda p, n=name: getattr(p.defaults, n)
    for name in _init_fields(DetectorParams) - not_keys:
        yield f"detection.{name}", DetectorParams(), lambda p, n=name: getattr(p, n)


def test_every_config_key_reaches_the_detector():
    cases = list(_config_keys_of_params())
    overrides = {}
    for key, defaults, _ in cases:
        overrides[key] = _changed(getattr(defaults, key.rpartition(".")[2]))
    params = load_settings(None, overrides).detector_params()
    arrived = {key: read(params) for key, _, read in cases}
    assert arrived == overrides


# Every key with a range rule, with values out of range (each bound), as the TOML file has them.
BAD_VALUES = [
    ("detection.resolution", -1),
    ("detection.resolution", 16),
    ("detection.threshold", 0),
    ("detection.window_s", 0),
    ("detection.radius_m", 0),
    ("detection.radius_m", 50_001),
    ("detection.allowed_lateness_s", -1),
    ("detection.resolve_after_s", 0),
    ("detection.update_interval_s", -1),
    ("detection.retain_resolved_s", -1),
    ("detection.default_accuracy_m", 0),
    ("detection.accuracy_floor_m", 0),
    ("detection.max_report_ids", 0),
    ("detection.source_weights", {"staff": -1}),
    ("detection.significance.max_false_per_day", 0),
    ("detection.significance.radii_m", []),
    ("detection.significance.radii_m", [50, -1]),
    ("detection.significance.windows_s", []),
    ("detection.significance.windows_s", [0]),
    ("detection.significance.neighbourhood_m", 0),
    ("detection.significance.neighbourhood_m", 50_001),
    ("detection.significance.still_active_p", 0),
    ("detection.significance.still_active_p", 1),
    ("detection.bursts.window_s", 0),
    ("detection.bursts.window_s", 3601),
    ("detection.bursts.radius_m", 0),
    ("detection.bursts.radius_m", 5001),
    ("detection.bursts.min_reporters", 1),
    ("detection.bursts.min_devices", 0),
    ("detection.bursts.cooldown_s", -1),
    ("reputation.prior", 0.1),
    ("reputation.prior", 1.5),
    ("reputation.prior_reports", 0),
    ("reputation.half_life_days", 0),
    ("reputation.floor", 0),
    ("reputation.floor", 1.5),
    ("reputation.flag_cost", 0.5),
    ("reputation.max_reporters", -1),
    ("surge.region_resolution", -1),
    ("surge.region_resolution", 16),
    ("surge.short_window_s", 0),
    ("surge.baseline_half_life_s", 0),
    ("surge.min_ratio", 0.5),
    ("surge.min_count", 0),
    ("surge.min_independent", 0),
    ("surge.baseline_floor_per_min", 0),
    ("surge.cooldown_s", -1),
    ("surge.resolve_after_s", -1),
    ("surge.update_interval_s", -1),
    ("surge.warmup_s", -1),
]
# Checked by the dataclass of the detector, in the same form
PARAMS_OF_SECTION = {
    "surge": (SurgeParams,),
    "reputation": (ReputationParams,),
    "detection.significance": (SignificanceParams,),
    "detection.bursts": (BurstParams,),
    "detection": (CategoryParams, DetectorParams),
}


def _toml(key, value):
    section, _, name = key.rpartition(".")
    if isinstance(value, dict):
        value = "{ " + ", ".join(f"{k} = {v}" for k, v in value.items()) + " }"
    else:
        value = json.dumps(value)
    return f"[{section}]\n{name} = {value}\n"


def test_every_rule_of_the_detector_has_a_bad_value_case():
    ruled = {
        f"{section}.{name}"
        for section, classes in PARAMS_OF_SECTION.items()
        for params in classes
        for name in bounds_of(params)
        if getattr(params(), name) is not None  # a category's optional rule: [detection]'s
    }
    assert ruled == {key for key, _ in BAD_VALUES}


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_a_value_out_of_range_is_refused_at_load_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r"\b"):
        load_settings(write(tmp_path, _toml(key, value)))


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_the_detector_refuses_the_same_values_naming_the_key(key, value):
    section, _, name = key.rpartition(".")
    # the dataclass whose field the key sets (a category's optional rule falls back to it)
    (params,) = [
        p
        for p in PARAMS_OF_SECTION[section]
        if name in _init_fields(p) and getattr(p(), name) is not None
    ]
    if isinstance(value, list):
        value = tuple(value)
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + " must be"):
        params(**{name: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [("threshold", 0), ("window_s", -5), ("radius_m", 50_001)],
)
def test_a_category_override_out_of_range_is_refused_naming_the_key(tmp_path, key, value):
    text = f"[detection.categories.pothole]\n{key} = {value}\n"
    with pytest.raises(ConfigError, match=rf"detection\.categories\.pothole\.{key}\b"):
        load_settings(write(tmp_path, text))


def test_the_future_tolerance_is_not_negative(tmp_path):
    with pytest.raises(ConfigError, match=r"detection\.future_tolerance_s\b"):
        load_settings(write(tmp_path, "[detection]\nfuture_tolerance_s = -1\n"))


def test_cli_exits_2_naming_the_key_of_a_rule_the_detector_checks():
    env = {**os.environ, "GEOINCIDENT_SURGE__MIN_COUNT": "20"}
    result = _cli("config", "show", env=env)
    assert result.returncode == 2
    assert "surge.min_count must be at least 3 x surge.min_ratio" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_detector_parameters_import_without_pydantic():
    code = (
        "import sys\n"
        "sys.modules['pydantic'] = sys.modules['pydantic_settings'] = None\n"
        "import geoincident.detectors.params\n"
        "from geoincident.detectors.params import DetectorParams\n"
        "DetectorParams()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


DEFAULT_CATEGORIES = {
    "streetlight_out",
    "traffic_signal_out",
    "road_flooding",
    "pothole",
    "water_main_break",
    "downed_tree",
    "gas_leak",
    "power_outage",
}
HEAT = '[taxonomy.heat_complaint]\ntags = ["noheat"]\nkeywords = ["no heat"]\n'


def _category_of(params, **wire) -> str:
    from geoincident.detectors.report import parse_report
    from tests.builders import wire as wire_of

    return parse_report(wire_of(**wire), params.taxonomy).category


def test_taxonomy_entries_extend_the_default(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HEAT)
    params = load_settings(path).detector_params()
    assert set(params.taxonomy.names) == DEFAULT_CATEGORIES | {"heat_complaint"}
    assert _category_of(params, tags=["#lightout"]) == "streetlight_out"  # defaults still resolve
    assert _category_of(params, tags=["#NoHeat"]) == "heat_complaint"


def test_taxonomy_replace_makes_the_entries_the_whole_taxonomy(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[taxonomy]\nreplace = true\n\n" + HEAT)
    params = load_settings(path).detector_params()
    assert params.taxonomy.names == ["heat_complaint"]
    assert _category_of(params, tags=["#lightout"]) == "unclassified"


def test_a_bad_taxonomy_replace_fails_naming_it(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[taxonomy]\nreplace = "sometimes"\n\n' + HEAT)
    with pytest.raises(ConfigError, match="taxonomy.replace must be true or false"):
        load_settings(path)


def test_config_show_of_an_extended_taxonomy_loads_back_the_same(tmp_path):
    from geoincident.stream.config import render_toml

    path = tmp_path / "c.toml"
    path.write_text(HEAT)
    shown = tmp_path / "shown.toml"
    shown.write_text(render_toml(load_settings(path)))
    again = load_settings(shown).detector_params().taxonomy
    assert again == load_settings(path).detector_params().taxonomy


def test_every_detection_rule_can_be_set_per_category_and_changes_only_it(tmp_path):
    text = (
        "[detection.categories.pothole]\n"
        "threshold = 2\nwindow_s = 604800\nradius_m = 40\n"
        "resolve_after_s = 604800\nupdate_interval_s = 3600\n\n"
        "[detection.categories.pothole.significance]\n"
        "max_false_per_day = 0.01\nstill_active_p = 0.05\n"
    )
    params = load_settings(write(tmp_path, text)).detector_params()
    pothole = params.for_category("pothole")
    assert (pothole.threshold, pothole.window_s, pothole.radius_m) == (2, 604800, 40)
    assert params.resolve_after_ms_of("pothole") == 604_800_000
    assert params.update_interval_ms_of("pothole") == 3_600_000
    significance, budget = params.significance_of("pothole")
    assert budget == 0.01 and significance.still_active_p == 0.05
    assert significance.radii_m == params.significance.radii_m  # unset: [detection.significance]
    # the other categories keep [detection]'s rules and an even share of the budget
    assert params.resolve_after_ms_of("gas_leak") == 3_600_000
    assert params.update_interval_ms_of("gas_leak") == 30_000
    assert params.significance_of("gas_leak") == (params.significance, 1.0 / 8)
    assert params.for_category("gas_leak") == params.defaults


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[detection.categories.pothole]\nresolve_after = 5\n", "resolve_after"),
        ("[detection.categories.pothole.significance]\nneighbourhood_m = 500\n", "neighbourhood_m"),
        ("[detection.categories.pothole]\nresolve_after_s = 0\n", "resolve_after_s"),
    ],
)
def test_an_unknown_or_bad_category_rule_is_refused_naming_it(tmp_path, text, key):
    with pytest.raises(
        ConfigError, match=rf"detection\.categories\.pothole\.(significance\.)?{key}\b"
    ):
        load_settings(write(tmp_path, text))


def test_config_show_prints_every_categorys_effective_rules_and_they_load_back(tmp_path):
    from geoincident.stream.config import render_toml

    text = (
        "[detection]\nresolve_after_s = 1800\n\n"
        "[detection.categories.pothole]\nresolve_after_s = 604800\n\n"
        "[detection.categories.gas_leak.significance]\nmax_false_per_day = 0.5\n"
    )
    before = load_settings(write(tmp_path, text)).detector_params()
    shown = render_toml(load_settings(write(tmp_path, text)))
    assert shown.count("[detection.categories.") >= 2 * 8  # rules and significance, each
    again = load_settings(write(tmp_path, shown)).detector_params()
    for name in before.taxonomy.names:
        assert again.resolve_after_ms_of(name) == before.resolve_after_ms_of(name)
        assert again.update_interval_ms_of(name) == before.update_interval_ms_of(name)
        (shown_rules, shown_budget), (rules, budget) = (
            again.significance_of(name),
            before.significance_of(name),
        )
        assert shown_budget == budget  # what the test uses of max_false_per_day
        unbudgeted = {"max_false_per_day": 1.0}
        assert dataclasses.replace(shown_rules, **unbudgeted) == dataclasses.replace(
            rules, **unbudgeted
        )
        for key in ("threshold", "window_s", "radius_m"):
            assert getattr(again.for_category(name), key) == getattr(before.for_category(name), key)
    assert again.resolve_after_ms_of("pothole") == 604_800_000
    assert again.resolve_after_ms_of("streetlight_out") == 1_800_000
    assert again.significance_of("gas_leak")[1] == 0.5


def test_regions_finer_than_the_surge_cells_are_refused_at_load_naming_the_key(tmp_path):
    """A region is made of whole surge cells: a finer one is refused when the config is
    loaded, by every command, not when the worker first routes."""
    with pytest.raises(ConfigError, match=r"scale\.region_resolution"):
        load_settings(write(tmp_path, "[scale]\nregion_resolution = 9\n"))
    assert load_settings(write(tmp_path, "[scale]\nregion_resolution = 6\n")).scaled_out
