"""Kafka security through the real command line and a real broker.

* TLS: the worker runs over mutual TLS against Tansu. Tansu's own TLS listener does not
  answer TLS here, so a TLS front (below) terminates it on the only port the broker advertises:
  every client of the worker must speak TLS with its client certificate, or it cannot reach
  the broker at all.
* Secrets: `geoincident config show` and `geoincident worker` run with the SASL password (and
  the TLS key's password) in the environment, in the config file and in password files; the
  secret never appears in what they print or log, including when the worker is refused at
  start and when it connects to a broker that requires SASL and turns it away. (A SASL login
  that succeeds cannot be shown with Tansu: it answers SCRAM only for users created over an
  unauthenticated connection, and its storage is memory only.)
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from geoincident.stream.broker import ensure_topics, free_tcp_port, resolve_tansu_binary
from geoincident.stream.config import load_settings
from geoincident.stream.security import client_options
from tests.certs import Pki, make_pki
from tests.integration.workers import (
    WorkerProcess,
    consume,
    planted_clusters,
    produce,
    topic_names,
)


class Tansu:
    """A Tansu broker of the test's own, started with the listener arguments given."""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.port = free_tcp_port()
        self.log_path = log_path
        self.log = log_path.open("ab")
        listener = f"tcp://127.0.0.1:{self.port}"
        if "--advertised-listener-url" not in args:
            args = ("--advertised-listener-url", listener, *args)
        self.process = subprocess.Popen(
            [resolve_tansu_binary(), "broker", "--listener-url", listener, *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1"},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                assert self.process.poll() is None, log_path.read_text()
                time.sleep(0.05)
        raise AssertionError(f"tansu not listening: {log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class TlsFront:
    """Terminates mutual TLS on `port` (both loopback families of "localhost") and forwards
    the bytes to a plaintext broker port; records the client certificate's name per
    connection."""

    def __init__(self, pki: Pki, upstream_port: int, port: int) -> None:
        self.port = port
        self.upstream_port = upstream_port
        self.clients: list[str | None] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "localhost", self.port, ssl=self.context)
        )
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subject = dict(item[0] for item in (writer.get_extra_info("peercert") or {})["subject"])
        self.clients.append(subject.get("commonName"))
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        def close() -> None:
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(close)
        self.thread.join(10)


def _tls_settings(pki: Pki, password_file: Path, brokers: str):
    return load_settings(
        None,
        {
            "kafka.brokers": brokers,
            "kafka.security_protocol": "SSL",
            "kafka.ssl_cafile": str(pki.ca),
            "kafka.ssl_certfile": str(pki.client_cert),
            "kafka.ssl_keyfile": str(pki.client_key),
            "kafka.ssl_key_password_file": str(password_file),
        },
    )


def test_the_worker_runs_over_mutual_tls_against_a_real_broker(tmp_path, topic_name):
    pki = make_pki(tmp_path / "pki", key_password="key-pass-7f3a")
    password_file = tmp_path / "key-password"
    password_file.write_text("key-pass-7f3a\n")
    front_port = free_tcp_port()
    tansu = Tansu(
        tmp_path / "tansu.log", "--advertised-listener-url", f"tcp://localhost:{front_port}"
    )
    front = worker = None
    try:
        front = TlsFront(pki, tansu.port, front_port)
        brokers = f"localhost:{front_port}"
        options = client_options(_tls_settings(pki, password_file, brokers).kafka)
        # the port the broker advertises speaks nothing but TLS with a client certificate
        with pytest.raises(Exception, match="bootstrap|Unable to|Connect"):
            asyncio.run(_admin_start(brokers, {}))
        names = topic_names(topic_name)
        topics = {names[k]: 1 for k in ("reports", "incidents", "reports_dlq", "actions")}
        asyncio.run(ensure_topics(brokers, {**topics, names["actions_dlq"]: 1}, **options))
        worker = WorkerProcess(
            brokers,
            names,
            tmp_path,
            GEOINCIDENT_KAFKA__SECURITY_PROTOCOL="SSL",
            GEOINCIDENT_KAFKA__SSL_CAFILE=str(pki.ca),
            GEOINCIDENT_KAFKA__SSL_CERTFILE=str(pki.client_cert),
            GEOINCIDENT_KAFKA__SSL_KEYFILE=str(pki.client_key),
            GEOINCIDENT_KAFKA__SSL_KEY_PASSWORD_FILE=str(password_file),
        ).start()
        worker.wait_until(lambda: worker.get("/ready")[0] == 200, timeout_s=120)
        now_ms = int(time.time() * 1000)
        places = [("pothole", 47.61, -122.33), ("streetlight_out", 47.62, -122.35)]
        values = planted_clusters(now_ms, places, ago_ms=200_000, step_ms=10_000, spread_m=30)
        produce(brokers, names["reports"], values, client_options=options)
        incidents = [
            orjson.loads(v)
            for v in consume(
                brokers,
                names["incidents"],
                until=lambda got: sum(b'"opened"' in v for v in got) >= len(places),
                timeout_s=90,
                client_options=options,
            )
        ]
        opened = sorted(e["category"] for e in incidents if e["event"] == "opened")
        assert opened == sorted(category for category, _, _ in places), worker.tail()
        assert worker.process is not None and worker.process.poll() is None
        # the worker's clients (Faust's consumer, producer and admin, its own consumers, the
        # topic check at start) all came through the front, each with the client certificate
        assert len(front.clients) >= 4, front.clients
        assert set(front.clients) == {pki.client_name}
    finally:
        if worker is not None:
            worker.stop()
        if front is not None:
            front.stop()
        tansu.stop()


async def _admin_start(brokers: str, options: dict) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers, request_timeout_ms=3000, **options)
    try:
        await admin.start()
    finally:
        await admin.close()


# ---------------------------------------------------------------------- secrets


def _cli(args: list[str], env: dict[str, str], timeout_s: float = 120) -> tuple[int, str]:
    """Run `geoincident ARGS`; its exit code and everything it printed (stdout and stderr:
    the logs go to stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "geoincident.stream.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
    )
    return result.returncode, result.stdout + result.stderr


def _secret_env(tmp_path: Path, where: str, secret: str, key_secret: str, **kafka: str):
    """The environment of one CLI run, with the SASL password and the TLS key password put
    `where`: the environment, the config file, or password files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOINCIDENT_")}
    env["GEOINCIDENT_WORKER__DATA_DIR"] = str(tmp_path / "state")
    settings = {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "worker", **kafka}
    tls = settings.get("security_protocol", "").endswith("SSL")
    if tls:
        settings["ssl_certfile"] = str(tmp_path / "client.pem")
    if where == "environment":
        env["GEOINCIDENT_KAFKA__SASL_PASSWORD"] = secret
        if tls:
            env["GEOINCIDENT_KAFKA__SSL_KEY_PASSWORD"] = key_secret
    elif where == "config file":
        settings["sasl_password"] = secret
        if tls:
            settings["ssl_key_password"] = key_secret
    else:
        (tmp_path / "sasl-password").write_text(secret + "\n")
        settings["sasl_password_file"] = str(tmp_path / "sasl-password")
        if tls:
            (tmp_path / "key-password").write_text(key_secret + "\n")
            settings["ssl_key_password_file"] = str(tmp_path / "key-password")
    lines = ["[kafka]"]
    for key, value in settings.items():
        lines.append(f"{key} = {value}" if value in ("true", "false") else f'{key} = "{value}"')
    lines += ["[worker]", 'log_level = "debug"']
    config = tmp_path / "geoincident.toml"
    config.write_text("\n".join(lines) + "\n")
    env["GEOINCIDENT_CONFIG"] = str(config)
    return env


WHERE = ("environment", "config file", "password files")


@pytest.mark.parametrize("where", WHERE)
def test_config_show_never_prints_the_secrets(tmp_path, where):
    secret, key_secret = f"sasl-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    env = _secret_env(tmp_path, where, secret, key_secret, security_protocol="SASL_SSL")
    code, output = _cli(["config", "show"], env)
    assert code == 0, output
    assert secret not in output and key_secret not in output
    if where == "password files":
        assert f'sasl_password_file = "{tmp_path / "sasl-password"}"' in output
    else:
        assert 'sasl_password = "***"' in output and 'ssl_key_password = "***"' in output


@pytest.mark.parametrize("where", WHERE)
def test_sasl_without_tls_is_refused_at_start_naming_the_key_and_no_secret(tmp_path, where):
    secret = f"sasl-{uuid.uuid4().hex}"
    env = _secret_env(tmp_path, where, secret, "", security_protocol="SASL_PLAINTEXT")
    code, output = _cli(["worker", "--brokers", "127.0.0.1:9"], env)
    assert code == 2, output
    assert "geoincident: bad configuration" in output
    assert "kafka.security_protocol SASL_PLAINTEXT sends the SASL credentials unencrypted" in (
        output
    )
    assert "kafka.allow_plaintext_sasl = true" in output
    assert "Traceback" not in output
    assert secret not in output


@pytest.mark.parametrize("where", WHERE)
def test_a_worker_turned_away_by_a_sasl_broker_never_logs_the_password(tmp_path, where):
    """A Tansu that requires SASL (and knows no user): the worker connects, runs the SCRAM
    exchange with the configured password at debug log level, is refused and exits; neither
    its output nor any file it wrote holds the password."""
    secret = f"sasl-{uuid.uuid4().hex}"
    tansu = Tansu(tmp_path / "tansu.log", "--authentication")
    try:
        env = _secret_env(
            tmp_path,
            where,
            secret,
            "",
            security_protocol="SASL_PLAINTEXT",
            allow_plaintext_sasl="true",
        )
        code, output = _cli(["worker", "--brokers", f"127.0.0.1:{tansu.port}"], env)
    finally:
        tansu.stop()
    assert code != 0, output
    assert "level=DEBUG" in output  # the most talkative level ran
    assert "SCRAM" in output or "sasl" in output.lower(), output[-3000:]
    assert secret not in output
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
