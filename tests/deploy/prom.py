"""A real Prometheus server for tests, running the shipped configuration.

``PrometheusServer(["127.0.0.1:6066"])`` starts the ``prometheus`` binary on a free loopback
port with ``deploy/prometheus/prometheus.yml`` rewritten for the test: the ``geoincident``
job scrapes the given targets (same ``metrics_path``), the ``prometheus`` job scrapes this
server itself, the shipped alert rules are loaded, scrapes and rule evaluations run every
second, and there is no Alertmanager. Storage is a temporary directory, removed on stop.

    with PrometheusServer([worker_address]) as prom:
        prom.wait_for('geoincident_reports_total{outcome="accepted"} > 0')
        print(prom.query('sum(geoincident_open_incidents)'))
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson
from ruamel.yaml import YAML

from geoincident.stream.broker import free_tcp_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
WORKER_JOB = "geoincident"
SELF_JOB = "prometheus"

Sample = dict[str, Any]


class PrometheusError(RuntimeError):
    pass


def retargeted_config(
    targets: Sequence[str],
    *,
    listen_address: str,
    scrape_interval_s: float = 1.0,
    config_path: Path = SHIPPED_CONFIG,
) -> dict[str, Any]:
    """The shipped config, retargeted for a test run (see the module docstring)."""
    shipped = YAML(typ="safe").load(config_path.read_text())
    interval = f"{scrape_interval_s:g}s"
    jobs = {job["job_name"]: job for job in shipped["scrape_configs"]}
    if WORKER_JOB not in jobs:
        raise PrometheusError(f"{config_path} has no scrape job {WORKER_JOB!r}")
    worker_job = dict(jobs[WORKER_JOB], static_configs=[{"targets": list(targets)}])
    scrape_configs = [worker_job]
    if SELF_JOB in jobs:
        scrape_configs.append(dict(jobs[SELF_JOB], static_configs=[{"targets": [listen_address]}]))
    for job in scrape_configs:
        # Per-job intervals of the shipped file would make a test wait for them.
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
    return {
        "global": dict(
            shipped.get("global") or {},
            scrape_interval=interval,
            evaluation_interval=interval,
            scrape_timeout=interval,
        ),
        # rule_files are relative to the config file; the copy lives elsewhere.
        "rule_files": [str(config_path.parent / pattern) for pattern in shipped["rule_files"]],
        "scrape_configs": scrape_configs,
    }


class PrometheusServer:
    """One ``prometheus`` process on 127.0.0.1, stopped by pid."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        scrape_interval_s: float = 1.0,
        config_path: Path = SHIPPED_CONFIG,
        binary: str = "prometheus",
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self._targets = list(targets)
        self._scrape_interval_s = scrape_interval_s
        self._config_path = config_path
        self._binary = binary
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_file: Any = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("prometheus is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "prometheus.log" if self._workdir is not None else None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        binary = shutil.which(self._binary)
        if binary is None:
            raise PrometheusError(
                f"{self._binary!r} not found: install the Debian package 'prometheus' "
                "(scripts/system-deps does)"
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="geoincident-prometheus-"))
        try:
            # A free port can be taken before prometheus binds it: try a few.
            for attempt in range(3):
                self.port = free_tcp_port()
                listen = f"127.0.0.1:{self.port}"
                config = retargeted_config(
                    self._targets,
                    listen_address=listen,
                    scrape_interval_s=self._scrape_interval_s,
                    config_path=self._config_path,
                )
                # YAML is a superset of JSON: one codec for the whole project.
                config_file = self._workdir / "prometheus.yml"
                config_file.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
                self._log_file = (self._workdir / "prometheus.log").open("ab")
                self._process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config_file}",
                        f"--storage.tsdb.path={self._workdir / 'data'}",
                        f"--web.listen-address={listen}",
                        "--log.level=info",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=self._log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                if self._wait_ready():
                    return self
                exited = self._process.poll() is not None
                self._terminate()
                if not exited or attempt == 2:
                    break
            raise PrometheusError(f"prometheus did not become ready:\n{self._log_tail()}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after a timeout; removes the temporary storage."""
        self._terminate()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- HTTP API ------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; an API error raises."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = orjson.loads(exc.read() or b"{}")
            raise PrometheusError(f"{path}: {body.get('error', exc)}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """Instant vector query: ``[{"metric": {...}, "value": [ts, "1"]}, ...]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} gives a {data['resultType']}, not a vector")
        return data["result"]

    def query_value(self, expr: str) -> float | None:
        """The value of a query expected to give at most one sample."""
        result = self.query(expr)
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} gives {len(result)} samples, expected one")
        return float(result[0]["value"][1]) if result else None

    def wait_for(
        self,
        expr: str,
        *,
        timeout_s: float = 20.0,
        until: Callable[[list[Sample]], bool] = bool,
    ) -> list[Sample]:
        """Poll ``expr`` until ``until(result)`` holds (default: any sample); then return it."""
        deadline = time.monotonic() + timeout_s
        result: list[Sample] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if until(result):
                return result
            time.sleep(min(0.25, self._scrape_interval_s / 2))
        raise TimeoutError(f"{expr!r} not satisfied after {timeout_s:g} s; last: {result}")

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups, each with its ``rules`` (alerts carry their ``state``)."""
        return self.api("rules")["groups"]

    # -- internals -----------------------------------------------------------------------------

    def _wait_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        return False

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _log_tail(self, max_bytes: int = 4000) -> str:
        log_path = self.log_path
        if log_path is None or not log_path.exists():
            return "(no log)"
        return log_path.read_bytes()[-max_bytes:].decode("utf-8", "replace")
