"""Every file the configuration names is read with a size limit, and a file over it fails at
start with a message naming the file (and the key)."""

from __future__ import annotations

import os

import pytest

from geoincident.files import MAX_SECRET_FILE_BYTES
from geoincident.geo.fences import MAX_GEOFENCE_BYTES, GeofenceError, Geofences
from geoincident.stream.config import MAX_CONFIG_BYTES, ConfigError, load_settings


def sparse(path, size: int):
    """A file of `size` bytes that takes no disk (reading it gives zeros)."""
    with path.open("wb") as handle:
        os.truncate(handle.fileno(), size)
    return path


def test_a_config_file_over_1_mib_is_refused_naming_it(tmp_path):
    config = tmp_path / "geoincident.toml"
    config.write_text('[kafka]\nbrokers = "k:9092"\n' + "# padding\n" * 50_000)
    assert config.stat().st_size < MAX_CONFIG_BYTES
    assert load_settings(config).kafka.brokers == "k:9092"
    big = sparse(tmp_path / "disk.img", MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match=rf"config file {big} is larger than 1,048,576 bytes"):
        load_settings(big)


def test_a_geofence_file_over_the_limit_is_refused_naming_the_key_and_file(tmp_path):
    assert MAX_GEOFENCE_BYTES == 64 * 1024 * 1024
    small = tmp_path / "fences.geojson"
    small.write_text('{"type": "FeatureCollection", "features": []}' + " " * 2000)
    assert len(Geofences.from_file(small)) == 0
    with pytest.raises(GeofenceError, match=rf"geofences {small} is larger than 1,024 bytes"):
        Geofences.from_file(small, max_bytes=1024)
    big = sparse(tmp_path / "big.geojson", MAX_GEOFENCE_BYTES + 1)
    with pytest.raises(
        ConfigError, match=rf"detection\.geofences: geofences {big} is larger than 67,108,864"
    ):
        load_settings(overrides={"detection.geofences": str(big)})
    listed = tmp_path / "list.geojson"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a GeoJSON object"):
        load_settings(overrides={"detection.geofences": str(listed)})


def test_secret_files_over_64_kib_are_refused_naming_the_key(tmp_path):
    from geoincident.stream.console import load_tokens

    big = tmp_path / "secret"
    big.write_bytes(b"s" * (MAX_SECRET_FILE_BYTES + 1))
    sasl = load_settings(
        overrides={
            "kafka.security_protocol": "SASL_SSL",
            "kafka.sasl_mechanism": "PLAIN",
            "kafka.sasl_username": "u",
            "kafka.sasl_password_file": str(big),
        }
    )
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password_file: .*larger than 65,536"):
        sasl.kafka.password()
    console = load_settings(overrides={"console.token_file": str(big)})
    with pytest.raises(ConfigError, match=r"console\.token_file: .*larger than 65,536"):
        load_tokens(console, environ={})
