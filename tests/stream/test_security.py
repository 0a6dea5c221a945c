"""Kafka security settings: SASL is never silently sent in clear, secrets stay out of output."""

import subprocess
import sys

import pytest

from geoincident.stream.config import ConfigError, load_settings


def _settings(tmp_path, **kafka):
    return load_settings(
        None,
        {"worker.data_dir": str(tmp_path), **{f"kafka.{k}": v for k, v in kafka.items()}},
    )


def test_sasl_without_a_sasl_protocol_is_refused_naming_the_keys(tmp_path):
    # aiokafka ignores the mechanism over PLAINTEXT: the client would not authenticate at all
    with pytest.raises(ConfigError, match=r"kafka\.sasl_mechanism PLAIN needs kafka\.security"):
        _settings(tmp_path, sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p")


def test_sasl_over_plaintext_needs_the_operator_to_say_so(tmp_path):
    with pytest.raises(ConfigError, match=r"SASL_PLAINTEXT sends the SASL credentials"):
        _settings(
            tmp_path,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="u",
            sasl_password="p",
        )
    allowed = _settings(
        tmp_path,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u",
        sasl_password="p",
        allow_plaintext_sasl=True,
    )
    assert allowed.kafka.security_protocol == "SASL_PLAINTEXT"


def test_the_worker_uses_tls_when_sasl_ssl_is_configured(tmp_path):
    # Faust chooses SASL_SSL only when its credentials carry an SSL context; without one a
    # SASL_SSL configuration connected with SASL over plaintext, the password in clear.
    from faust.types.auth import AuthProtocol

    from geoincident.stream.app import Worker, kafka_client_options

    settings = _settings(
        tmp_path,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",
    )
    credentials = Worker(settings)._credentials()
    assert credentials.protocol == AuthProtocol.SASL_SSL
    assert credentials.ssl_context is not None
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_SSL" and options["ssl_context"] is not None


def test_the_password_comes_from_a_file_and_is_never_printed(tmp_path, monkeypatch):
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-file\n")
    settings = _settings(
        tmp_path,
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password_file=str(secret),
    )
    assert settings.kafka.password() == "s3cret-from-file"
    with pytest.raises(ConfigError, match="set one"):
        _settings(
            tmp_path,
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_username="u",
            sasl_password="p",
            sasl_password_file=str(secret),
        )
    env = {
        "GEOINCIDENT_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "GEOINCIDENT_KAFKA__SASL_MECHANISM": "PLAIN",
        "GEOINCIDENT_KAFKA__SASL_USERNAME": "u",
        "GEOINCIDENT_KAFKA__SASL_PASSWORD": "s3cret-from-env",
        "PATH": "/usr/bin:/bin",
    }
    shown = subprocess.run(
        [sys.executable, "-m", "geoincident.stream.cli", "config", "show"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "s3cret-from-env" not in shown.stdout + shown.stderr
    assert 'sasl_password = "***"' in shown.stdout
