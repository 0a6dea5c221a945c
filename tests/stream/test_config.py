import subprocess
import sys

import pytest

from geoincident.stream.config import ConfigError, load_settings


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
