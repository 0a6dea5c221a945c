"""The `geoincident` command line (CONTRACT §5)."""

from __future__ import annotations

import gc
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from geoincident import __version__, compiled
from geoincident.stream.config import ConfigError, Settings, load_settings, render_toml

app = typer.Typer(
    name="geoincident",
    help="Streaming geo-incident detector: independent geolocated reports in, incidents out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="GEOINCIDENT_CONFIG",
        help="TOML config file (every key has a default).",
        exists=False,
        dir_okay=False,
    ),
]


def fail_config(error: ConfigError) -> None:
    typer.echo(f"geoincident: {error}", err=True)
    raise typer.Exit(2)


def settings_from(config: Path | None, overrides: dict | None = None) -> Settings:
    try:
        return load_settings(config, overrides)
    except ConfigError as error:
        fail_config(error)
        raise  # unreachable: fail_config exits


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"geoincident {__version__}\ncore: {compiled.describe()}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=version_callback, is_eager=True, help="Print version."),
    ] = False,
) -> None:
    """geoincident: validated incidents from crowds of geolocated reports."""


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration (defaults <- file <- GEOINCIDENT_* environment)."""
    settings = settings_from(config)
    typer.echo(render_toml(settings))


@app.command()
def replay(
    input_path: Annotated[
        str, typer.Argument(metavar="INPUT", help="Reports JSONL, or - for stdin.")
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", envvar="GEOINCIDENT_OUTPUT", help="Incidents JSONL (default stdout)."
        ),
    ] = None,
    dlq: Annotated[
        str | None,
        typer.Option(
            "--dlq",
            envvar="GEOINCIDENT_DLQ",
            help="Rejected reports JSONL (default <output>.dlq.jsonl, or <input>.dlq.jsonl).",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the detector over a JSONL file of reports, in event time; write incident events."""
    from geoincident.stream.replay import replay_files

    settings = settings_from(config)
    params = settings.detector_params()
    if dlq is None:
        if output not in (None, "-"):
            dlq = f"{output}.dlq.jsonl"
        elif input_path != "-":
            dlq = f"{input_path}.dlq.jsonl"
        else:
            dlq = "replay.dlq.jsonl"
    with ExitStack() as stack:
        try:
            source: BinaryIO = (
                sys.stdin.buffer
                if input_path == "-"
                else stack.enter_context(open(input_path, "rb"))  # noqa: SIM115
            )
            sink: BinaryIO = (
                sys.stdout.buffer
                if output in (None, "-")
                else stack.enter_context(open(output, "wb"))  # noqa: SIM115
            )
            dlq_sink: BinaryIO = stack.enter_context(open(dlq, "wb"))  # noqa: SIM115
        except OSError as error:
            typer.echo(f"geoincident replay: {error}", err=True)
            raise typer.Exit(2) from None
        progress_cb, stop_progress = _progress(input_path)
        try:
            summary = replay_files(
                source,
                sink,
                dlq_sink,
                params,
                input_path,
                progress_cb,
                regions=settings.region_map(params),
            )
        finally:
            stop_progress()
    _print_summary(summary.as_dict(), dlq)


BrokersOption = Annotated[
    str | None,
    typer.Option(
        "--brokers", envvar="GEOINCIDENT_BROKERS", help="Kafka bootstrap HOST:PORT[,HOST:PORT...]."
    ),
]


@app.command()
def worker(
    config: ConfigOption = None,
    brokers: BrokersOption = None,
    web_port: Annotated[
        int | None,
        typer.Option(
            "--web-port", envvar="GEOINCIDENT_WEB_PORT", help="Port of /metrics, /health."
        ),
    ] = None,
) -> None:
    """Run the Faust worker: reports in, incidents, DLQ and actions on Kafka."""
    settings = settings_from(config, {"kafka.brokers": brokers, "worker.web_port": web_port})
    from aiokafka.errors import KafkaError

    from geoincident.stream.app import Worker

    configure_logging(settings.worker.log_level)
    try:
        if settings.scaled_out:
            from geoincident.stream.sharded import ShardedWorker

            ShardedWorker(settings).run(loglevel=settings.worker.log_level)
        else:
            Worker(settings).run(loglevel=settings.worker.log_level)
    except ConfigError as error:  # a TLS or password file that cannot be used
        fail_config(error)
    except TimeoutError as error:
        typer.echo(f"geoincident worker: broker {settings.kafka.brokers}: {error}", err=True)
        raise typer.Exit(1) from None
    except KafkaError as error:  # e.g. the broker refused the SASL login or the TLS peer
        typer.echo(
            f"geoincident worker: broker {settings.kafka.brokers}: {type(error).__name__}: {error}",
            err=True,
        )
        raise typer.Exit(1) from None


@app.command()
def console(
    config: ConfigOption = None,
    brokers: BrokersOption = None,
    port: Annotated[
        int | None,
        typer.Option("--port", envvar="GEOINCIDENT_CONSOLE__PORT", help="Port of the page."),
    ] = None,
) -> None:
    """The dispatchers' live web page and its JSON API (its own process; any number of
    workers): incidents from the `incidents` topic, actions to `incident-actions`."""
    settings = settings_from(config, {"kafka.brokers": brokers, "console.port": port})
    from geoincident.stream.console import run

    configure_logging(settings.worker.log_level)
    raise typer.Exit(run(settings))


@app.command()
def notify(
    config: ConfigOption = None,
    brokers: BrokersOption = None,
) -> None:
    """Push incident events to webhooks (JSON or Slack) and a city's Open311 endpoint, as
    `[notify]` routes them: its own process and consumer group, at least once, deduplicated."""
    settings = settings_from(config, {"kafka.brokers": brokers})
    from geoincident.stream.notify import run

    configure_logging(settings.worker.log_level)
    raise typer.Exit(run(settings))


@app.command()
def demo(
    brokers: BrokersOption = None,
    speed: Annotated[
        float,
        typer.Option(
            "--speed", envvar="GEOINCIDENT_SPEED", min=1.0, help="Event time x wall time."
        ),
    ] = 60.0,
    hours: Annotated[
        float, typer.Option("--hours", envvar="GEOINCIDENT_HOURS", min=0.5, help="Simulated hours.")
    ] = 6.0,
    seed: Annotated[int, typer.Option("--seed", envvar="GEOINCIDENT_SEED")] = 1,
    config: ConfigOption = None,
) -> None:
    """Embedded broker (unless --brokers) + worker + live simulated city; Ctrl-C stops all."""
    settings = settings_from(config, {"kafka.brokers": brokers})
    from geoincident.stream.demo import run_demo

    raise typer.Exit(run_demo(settings, brokers, speed, hours, seed, config))


def configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )


def _progress(input_path: str):
    """A live line counter on a terminal; nothing when stderr is a file or a pipe."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True
    )
    task = progress.add_task(f"replaying {input_path}")
    progress.start()

    def update(lines_done: int) -> None:
        progress.update(task, description=f"replaying {input_path}: {lines_done:,} lines")

    return update, progress.stop


SHOWN_BURSTS = 20  # the summary lists this many new-reporter bursts, then counts the rest


def _print_summary(summary: dict, dlq_path: str) -> None:
    err = sys.stderr
    rejected = summary["rejected_by_reason"]
    incidents = summary["incidents"]
    print(
        f"read {summary['read']:,}  accepted {summary['accepted']:,}  "
        f"rejected {summary['rejected']:,}  duplicate {summary['duplicate']:,}  "
        f"unclassified {summary['unclassified']:,}",
        file=err,
    )
    if rejected:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in rejected.items())
        print(f"rejected by reason: {reasons}  (DLQ: {dlq_path})", file=err)
    print(
        f"incidents opened {incidents['opened']:,}  updated {incidents['updated']:,}  "
        f"resolved {incidents['resolved']:,}",
        file=err,
    )
    bursts = summary["new_reporter_bursts"]
    if bursts:
        print(f"new-reporter bursts {len(bursts):,} (docs/operations.md):", file=err)
        for burst in bursts[:SHOWN_BURSTS]:
            print("  " + " ".join(f"{key}={value}" for key, value in burst.items()), file=err)
        if len(bursts) > SHOWN_BURSTS:
            print(f"  ... and {len(bursts) - SHOWN_BURSTS:,} more", file=err)
    print(f"core: {compiled.describe()}", file=err)


def _register_optional_commands() -> None:
    """Commands that live in their own packages register themselves here."""
    try:
        from geoincident.sim.cli import register as register_sim
    except ImportError:
        return
    register_sim(app)


_register_optional_commands()


# The detector holds millions of long-lived containers (window entries, grid buckets, heap
# entries) and makes many short-lived ones per report: with Python's default first-generation
# threshold (700 allocations) the collector ran every few reports and took 15 % of a replay of
# 1M reports. At 50,000 it runs 70x less often (and each older generation after 20 collections
# of the one below, not 10); the 1M replay took 24 s instead of 29, same bytes.
GC_THRESHOLDS = (50_000, 20, 20)


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    app()


if __name__ == "__main__":
    main()
