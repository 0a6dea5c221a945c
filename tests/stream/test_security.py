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


# ---------------------------------------------------------------------- SASL options
#
# What the Kafka clients are given, checked at the boundary: the embedded broker (Tansu) cannot
# run with SASL here (it answers SCRAM only for users created over an unauthenticated connection,
# and forgets them with its memory-only storage when restarted with authentication on), so a
# SASL handshake that succeeds cannot be shown against a real broker in these tests. TLS can:
# tests/integration/test_tls.py runs the worker over mutual TLS against Tansu.

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _sasl_ssl(tmp_path, mechanism, **extra):
    return _settings(
        tmp_path,
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username="worker",
        sasl_password="pw-" + mechanism,
        **extra,
    )


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_each_sasl_mechanism_reaches_aiokafka_and_faust_alike(tmp_path, mechanism):
    """The aiokafka options (console, notifier, the worker's own consumers, topic creation) and
    what Faust derives from the worker's credentials for its consumers, producer and admin
    client carry the same protocol, mechanism, user, password and a verifying TLS context."""
    import ssl

    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from geoincident.stream.app import Worker, kafka_client_options

    settings = _sasl_ssl(tmp_path, mechanism)
    options = kafka_client_options(settings)
    worker = Worker(settings)
    conf = worker.app.conf
    faust_options = credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)
    for given in (options, faust_options):
        assert given["security_protocol"] == "SASL_SSL"
        assert given["sasl_mechanism"] == mechanism
        assert given["sasl_plain_username"] == "worker"
        assert given["sasl_plain_password"] == "pw-" + mechanism
        context = given["ssl_context"]
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_faust_producer_and_consumer_are_built_with_the_credentials(tmp_path, monkeypatch):
    """The very keyword arguments Faust hands to aiokafka's producer and to its client
    consumer, captured at the aiokafka constructors."""
    import aiokafka

    from geoincident.stream.app import Worker

    captured: dict[str, dict] = {}

    def capture(name):
        def build(*args, **kwargs):
            captured[name] = kwargs
            return object()

        return build

    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", capture("producer"))
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", capture("consumer"))
    worker = Worker(_sasl_ssl(tmp_path, "SCRAM-SHA-512"))
    producer = worker.app.producer
    producer._new_producer()
    worker.app.consumer._thread._create_client_consumer(worker.app.transport)
    for name in ("producer", "consumer"):
        given = captured[name]
        assert given["security_protocol"] == "SASL_SSL", name
        assert given["sasl_mechanism"] == "SCRAM-SHA-512", name
        assert given["sasl_plain_password"] == "pw-SCRAM-SHA-512", name
        assert given["ssl_context"] is not None, name


@pytest.mark.parametrize("mechanism", ["GSSAPI", "OAUTHBEARER", "SCRAM-SHA-1", "plain"])
def test_other_sasl_mechanisms_are_refused_naming_the_key(tmp_path, mechanism):
    with pytest.raises(ConfigError, match=r"kafka\.sasl_mechanism: Input should be 'PLAIN'"):
        _sasl_ssl(tmp_path, mechanism)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_over_plaintext_is_refused_for_every_mechanism(tmp_path, mechanism):
    kafka = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_username": "u",
        "sasl_password": "p",
    }
    with pytest.raises(ConfigError, match=r"kafka\.allow_plaintext_sasl = true"):
        _settings(tmp_path, **kafka)
    from geoincident.stream.security import client_options

    options = client_options(_settings(tmp_path, allow_plaintext_sasl=True, **kafka).kafka)
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert "ssl_context" not in options


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
            r"kafka\.sasl_password \(or kafka\.sasl_password_file\) is needed",
        ),
        ({"sasl_username": "u"}, r"kafka\.sasl_username is set but kafka\.sasl_mechanism"),
        ({"sasl_password": "p"}, r"kafka\.sasl_password is set but kafka\.sasl_mechanism"),
        ({"ssl_cafile": "ca.pem"}, r"kafka\.ssl_cafile is set but .*PLAINTEXT does not use TLS"),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "allow_plaintext_sasl": True,
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
                "sasl_password": "p",
                "ssl_certfile": "c.pem",
            },
            r"kafka\.ssl_certfile is set but .*SASL_PLAINTEXT does not use TLS",
        ),
        ({"ssl_check_hostname": False}, r"kafka\.ssl_check_hostname = false but"),
        (
            {"security_protocol": "SSL", "ssl_keyfile": "k.pem"},
            r"kafka\.ssl_keyfile needs kafka\.ssl_certfile",
        ),
        (
            {"security_protocol": "SSL", "ssl_key_password": "x"},
            r"kafka\.ssl_key_password\(_file\) needs kafka\.ssl_certfile",
        ),
        (
            {
                "security_protocol": "SSL",
                "ssl_certfile": "c.pem",
                "ssl_key_password": "x",
                "ssl_key_password_file": "x.txt",
            },
            r"kafka\.ssl_key_password and kafka\.ssl_key_password_file: set one",
        ),
    ],
)
def test_settings_that_would_be_ignored_or_cannot_authenticate_are_refused(
    tmp_path, kafka, message
):
    with pytest.raises(ConfigError, match=message):
        _settings(tmp_path, **kafka)


# ---------------------------------------------------------------------- TLS


def _tls(tmp_path, pki, **extra):
    return _settings(
        tmp_path,
        security_protocol="SSL",
        ssl_cafile=str(pki.ca),
        ssl_certfile=str(pki.client_cert),
        ssl_keyfile=str(pki.client_key),
        **extra,
    )


async def _serve_tls(pki, seen: list):
    """A TLS server that requires a client certificate from the test CA; records each
    client's certificate common name."""
    import asyncio
    import ssl

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server_context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server_context.verify_mode = ssl.CERT_REQUIRED

    async def answer(reader, writer):
        peer = writer.get_extra_info("peercert") or {}
        seen.append(dict(item[0] for item in peer.get("subject", ())).get("commonName"))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)


async def _handshake(context, port: int, host: str) -> bytes:
    import asyncio

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=host
    )
    try:
        return await reader.read(2)
    finally:
        writer.close()


async def test_mutual_tls_with_the_configured_ca_certificate_and_encrypted_key(tmp_path):
    """The context built from [kafka] verifies the server against ssl_cafile, checks its name,
    and presents the client certificate, its key unlocked by the password from a file."""
    import ssl

    from geoincident.stream.security import client_options, ssl_context
    from tests.certs import make_pki

    pki = make_pki(tmp_path / "pki", key_password="key-secret")
    password_file = tmp_path / "key-password"
    password_file.write_text("key-secret\n")
    settings = _tls(tmp_path, pki, ssl_key_password_file=str(password_file))
    seen: list = []
    server = await _serve_tls(pki, seen)
    port = server.sockets[0].getsockname()[1]
    try:
        context = client_options(settings.kafka)["ssl_context"]
        assert await _handshake(context, port, "localhost") == b"ok"
        assert seen == [pki.client_name]
        # hostname check on by default: the certificate names localhost, not the address
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            await _handshake(context, port, "127.0.0.1")
        unchecked = _tls(
            tmp_path, pki, ssl_key_password_file=str(password_file), ssl_check_hostname=False
        )
        assert await _handshake(ssl_context(unchecked.kafka), port, "127.0.0.1") == b"ok"
        # without the client certificate the server refuses the connection
        no_cert = _settings(tmp_path, security_protocol="SSL", ssl_cafile=str(pki.ca))
        try:
            reply: bytes | None = await _handshake(ssl_context(no_cert.kafka), port, "localhost")
        except (ssl.SSLError, ConnectionError):
            reply = None
        assert not reply, "served without a client certificate"
        assert seen == [pki.client_name, pki.client_name]  # nobody served without one
        # and a server whose CA is not the configured one is refused
        other = make_pki(tmp_path / "other")
        stranger = _settings(tmp_path, security_protocol="SSL", ssl_cafile=str(other.ca))
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await _handshake(ssl_context(stranger.kafka), port, "localhost")
    finally:
        server.close()
        await server.wait_closed()


def test_tls_files_that_cannot_be_used_fail_at_start_naming_the_key(tmp_path):
    from geoincident.stream.security import ssl_context
    from tests.certs import make_pki

    pki = make_pki(tmp_path / "pki", key_password="key-secret")
    missing = _settings(tmp_path, security_protocol="SSL", ssl_cafile=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"kafka\.ssl_cafile: cannot read .*nope\.pem"):
        ssl_context(missing.kafka)
    not_a_ca = _settings(tmp_path, security_protocol="SSL", ssl_cafile=str(pki.client_key))
    with pytest.raises(ConfigError, match=r"kafka\.ssl_cafile: no CA certificate in"):
        ssl_context(not_a_ca.kafka)
    with pytest.raises(ConfigError, match=r"encrypted key needs kafka\.ssl_key_password"):
        ssl_context(_tls(tmp_path, pki).kafka)
    with pytest.raises(ConfigError, match=r"kafka\.ssl_certfile/kafka\.ssl_keyfile: cannot load"):
        ssl_context(_tls(tmp_path, pki, ssl_key_password="wrong").kafka)
    assert ssl_context(_tls(tmp_path, pki, ssl_key_password="key-secret").kafka) is not None


def test_every_kafka_client_in_the_code_takes_the_security_options():
    """Each place that builds a Kafka client passes the options of stream/security.py (or,
    for Faust, the credentials built from them), directly or through a dict built in the same
    function: a new client that forgets them would connect in plaintext, without credentials.
    The one exception is the embedded broker's readiness probe (stream/broker.py), which only
    ever talks to the local plaintext Tansu."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    constructor = re.compile(r"\b(AIOKafka(?:Consumer|Producer|AdminClient|Client)|faust\.App)\(")
    # helpers whose result holds the options (each checked below to build them)
    helpers = {"stream/console.py": "_consumer_options"}
    found = []
    for folder in ("stream", "sim", "geo", "detectors", "geoincident"):
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text()
            relative = str(path.relative_to(root))
            for match in constructor.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                where = f"{relative}:{line}"
                found.append(where)
                start = text.rfind("\ndef ", 0, match.start())
                start = max(start, text.rfind("\n    def ", 0, match.start()))
                depth, end = 0, match.end() - 1
                for end in range(match.end() - 1, len(text)):  # to the call's closing paren
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    if depth == 0:
                        break
                function = text[start : end + 1]
                if relative == "stream/broker.py" and "probe" in function:
                    continue
                tokens = r"client_options|broker_credentials"
                if relative in helpers:
                    tokens += "|" + helpers[relative]
                assert re.search(tokens, function), (
                    f"{where}: {match.group(1)} built without the security options"
                )
    for relative, helper in helpers.items():
        text = (root / relative).read_text()
        body = text[text.index(f"def {helper}(") :]
        assert "kafka_client_options(" in body[: body.index("\ndef ")], helper
    assert len(found) >= 10, found  # the scan found the clients it is about
