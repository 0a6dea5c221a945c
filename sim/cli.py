"""``geoincident simulate`` and ``geoincident evaluate``, registered on the main Typer app."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, BinaryIO, TypeVar

import orjson
import typer

from .common import parse_ts_ms

T = TypeVar("T")

SIM_EPILOG = (
    "Families (default counts): true=6 late=3 cell_edge=3 window_edge=3 close_pair=2 staff=2 "
    "sub_threshold=3 repeater=2 shared_device=2 trickle=2 scatter=2 surge=1. "
    "A busy city: --background-per-min 1000 --hotspots downtown,nightlife --daily-cycle "
    "--outbreak power_outage:5000:10. Without those four the output is the sparse city, byte "
    "for byte."
)
# Lines per write: a dense stream is a million lines, never joined into one buffer.
_WRITE_CHUNK_LINES = 10_000


def _parsed(parse: Callable[[str], T], value: str, flag: str) -> T:
    """A flag's value parsed, or a usage error naming the flag (exit code 2)."""
    try:
        return parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def simulate_command(
    seed: Annotated[
        int, typer.Option(envvar="GEOINCIDENT_SEED", help="Random seed; same seed, same bytes.")
    ] = 1,
    hours: Annotated[
        float,
        typer.Option(envvar="GEOINCIDENT_HOURS", min=0.5, help="Event-time duration in hours."),
    ] = 6.0,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            envvar="GEOINCIDENT_SIMULATE_OUTPUT",
            help="Reports JSONL in arrival order ('-' = stdout).",
        ),
    ] = "-",
    truth: Annotated[
        Path | None,
        typer.Option(
            envvar="GEOINCIDENT_TRUTH",
            dir_okay=False,
            help="Truth JSON (default: <output stem>.truth.json beside a file output).",
        ),
    ] = None,
    rate: Annotated[
        float,
        typer.Option(
            envvar="GEOINCIDENT_RATE",
            min=0.0,
            help="Background reports per hour per category (--background-per-min wins).",
        ),
    ] = 6.0,
    background_per_min: Annotated[
        float | None,
        typer.Option(
            envvar="GEOINCIDENT_BACKGROUND_PER_MIN",
            min=0.0,
            help="Uniform background reports per minute over all 8 categories together, split "
            "evenly (e.g. 300, 1000, 2770 for a busy city of ~400 km²); overrides --rate.",
        ),
    ] = None,
    hotspots: Annotated[
        str,
        typer.Option(
            envvar="GEOINCIDENT_HOTSPOTS",
            help="Comma list of NAME[=FACTOR] hot spots where background runs FACTOR times the "
            "uniform rate, placed from the seed: 'downtown' (a 2 km-radius disk, 5x), "
            "'nightlife' (a street 1.5 km long and 70 m wide, 10x; busiest at night with "
            "--daily-cycle). E.g. 'downtown,nightlife' or 'downtown=8'.",
        ),
    ] = "",
    daily_cycle: Annotated[
        bool,
        typer.Option(
            "--daily-cycle",
            envvar="GEOINCIDENT_DAILY_CYCLE",
            help="Background follows the hour of day (UTC of event time): 0.35x at 04:00, "
            "1.65x at 18:00, mean 1x; a nightlife street peaks at 23:00.",
        ),
    ] = False,
    outbreak: Annotated[
        str,
        typer.Option(
            envvar="GEOINCIDENT_OUTBREAK",
            help="CATEGORY:COUNT:MINUTES[:RADIUS_M]: COUNT reports from COUNT fresh reporters "
            "over a district disk (default radius 2500 m, centred where three H3 res-6 cells "
            "meet) within MINUTES, in the second half of the stream; truth family 'outbreak', "
            "expecting one surge. E.g. 'power_outage:5000:10'.",
        ),
    ] = "",
    families: Annotated[
        str,
        typer.Option(
            envvar="GEOINCIDENT_FAMILIES",
            help="Planted counts over the defaults, e.g. 'true=10,surge=0'; 'none,true=2' "
            "for only two true incidents.",
        ),
    ] = "",
    bbox: Annotated[
        str,
        typer.Option(
            envvar="GEOINCIDENT_BBOX",
            help="LAT_MIN,LON_MIN,LAT_MAX,LON_MAX (default: ~20 x 20 km around Seattle).",
        ),
    ] = "",
    start: Annotated[
        str,
        typer.Option(envvar="GEOINCIDENT_START", help="Event time of the stream start (RFC 3339)."),
    ] = "2026-11-24T06:00:00Z",
    live: Annotated[
        bool,
        typer.Option(
            "--live", envvar="GEOINCIDENT_LIVE", help="Produce to Kafka in real time instead."
        ),
    ] = False,
    brokers: Annotated[
        str, typer.Option(envvar="GEOINCIDENT_BROKERS", help="Kafka bootstrap HOST:PORT[,...].")
    ] = "localhost:9092",
    topic: Annotated[
        str, typer.Option(envvar="GEOINCIDENT_REPORTS_TOPIC", help="Topic for --live.")
    ] = "reports",
    speed: Annotated[
        float,
        typer.Option(
            envvar="GEOINCIDENT_SPEED",
            min=0.001,
            help="--live: event time runs SPEED times faster than wall time.",
        ),
    ] = 1.0,
    anchor: Annotated[
        str,
        typer.Option(
            envvar="GEOINCIDENT_ANCHOR",
            help="--live: 'start' = the stream starts now; 'end' = it ends now "
            "(event time never ahead of the wall clock when SPEED > 1).",
        ),
    ] = "start",
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="GEOINCIDENT_CONFIG",
            help="--live: TOML config whose [kafka] security settings (SASL, TLS) the producer "
            "uses.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Synthetic city report stream with planted incidents and decoys, plus its truth."""
    from .simulate import (
        DEFAULT_BBOX,
        OptionError,
        SimParams,
        parse_bbox,
        parse_families,
        parse_hotspots,
        parse_outbreak,
        simulate,
        truth_to_json,
    )

    family_counts = _parsed(parse_families, families, "--families")
    box = _parsed(parse_bbox, bbox, "--bbox") if bbox else DEFAULT_BBOX
    start_ms = _parsed(parse_ts_ms, start, "--start")
    if anchor not in ("start", "end"):
        raise typer.BadParameter("must be 'start' or 'end'", param_hint="--anchor")
    hotspot_specs = _parsed(parse_hotspots, hotspots, "--hotspots")
    outbreak_spec = _parsed(parse_outbreak, outbreak, "--outbreak") if outbreak else None
    params = SimParams(
        seed=seed,
        bbox=box,
        start_ms=start_ms,
        hours=hours,
        background_per_hour=rate,
        families=family_counts,
        background_per_min=background_per_min,
        hotspots=hotspot_specs,
        daily_cycle=daily_cycle,
        outbreak=outbreak_spec,
    )
    try:
        sim = simulate(params)
    except OptionError as exc:
        raise typer.BadParameter(str(exc), param_hint=exc.option) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--hours/--families/--bbox") from None

    if live:
        _run_live(sim, truth, brokers, topic, speed, anchor, config)
        return

    from .simulate import report_to_json

    truth_path = truth
    if truth_path is None and output != "-":
        out = Path(output)
        truth_path = out.with_name(out.name.removesuffix(".jsonl") + ".truth.json")
    try:
        if output == "-":
            _write_reports(sys.stdout.buffer, sim.reports, report_to_json)
            sys.stdout.buffer.flush()
        else:
            with Path(output).open("wb") as handle:
                _write_reports(handle, sim.reports, report_to_json)
        if truth_path is not None:
            truth_path.write_bytes(orjson.dumps(truth_to_json(sim), option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise _fail(str(exc)) from None
    where = "stdout" if output == "-" else output
    typer.echo(
        f"{len(sim.reports)} reports -> {where}; {len(sim.truth)} truth items -> "
        f"{truth_path if truth_path is not None else '(not written: use --truth)'}",
        err=True,
    )


def _write_reports(handle: BinaryIO, reports: Sequence, to_json: Callable[..., dict]) -> None:
    for first in range(0, len(reports), _WRITE_CHUNK_LINES):
        chunk = reports[first : first + _WRITE_CHUNK_LINES]
        handle.write(b"".join(orjson.dumps(to_json(r)) + b"\n" for r in chunk))


def _run_live(
    sim,
    truth: Path | None,
    brokers: str,
    topic: str,
    speed: float,
    anchor: str,
    config: Path | None,
) -> None:
    from geoincident.stream.config import ConfigError, load_settings
    from geoincident.stream.security import client_options

    from .live import LiveOptions, live_shift_ms, produce_until_signal
    from .simulate import truth_to_json

    try:  # the [kafka] security settings, from the file and GEOINCIDENT_KAFKA__* variables
        security = client_options(load_settings(config).kafka)
    except ConfigError as error:
        typer.echo(f"geoincident simulate: {error}", err=True)
        raise typer.Exit(2) from None
    options = LiveOptions(
        brokers=brokers, topic=topic, speed=speed, anchor=anchor, client_options=security
    )
    shift_ms = live_shift_ms(sim, round(time.time() * 1000), speed, anchor)
    try:
        if truth is not None:
            doc = truth_to_json(sim, shift_ms)
            truth.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"producing {len(sim.reports)} reports to {topic} on {brokers} at speed {speed:g} "
        "(Ctrl-C stops)",
        err=True,
    )
    try:
        sent = asyncio.run(produce_until_signal(sim, options, shift_ms))
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
        return
    except Exception as exc:  # a broker that stays down, a fatal Kafka error
        raise _fail(f"producing to {brokers} failed: {exc!r}") from None
    typer.echo(f"sent {sent} reports", err=True)


def evaluate_command(
    incidents: Annotated[
        Path,
        typer.Option(
            envvar="GEOINCIDENT_INCIDENTS",
            exists=True,
            dir_okay=False,
            help="Incident events JSONL (replay output or a topic dump).",
        ),
    ],
    truth: Annotated[
        Path,
        typer.Option(
            envvar="GEOINCIDENT_TRUTH",
            exists=True,
            dir_okay=False,
            help="Truth JSON written by 'geoincident simulate'.",
        ),
    ],
    as_json: Annotated[
        bool,
        typer.Option("--json", envvar="GEOINCIDENT_EVALUATE_JSON", help="Print one JSON object."),
    ] = False,
    min_recall: Annotated[
        float | None,
        typer.Option(
            envvar="GEOINCIDENT_MIN_RECALL", min=0.0, max=1.0, help="Exit 1 if recall is below."
        ),
    ] = None,
    min_precision: Annotated[
        float | None,
        typer.Option(
            envvar="GEOINCIDENT_MIN_PRECISION",
            min=0.0,
            max=1.0,
            help="Exit 1 if precision is below.",
        ),
    ] = None,
) -> None:
    """Recall, precision, decoy hits, splits, false incidents and delays against the truth."""
    from .evaluate import evaluate_files, render

    try:
        result = evaluate_files(incidents, truth)
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(result.to_json()) + b"\n")
        sys.stdout.buffer.flush()
    else:
        from rich.console import Console

        console = Console()
        for renderable in render(result):
            console.print(renderable)
    failures = []
    if min_recall is not None and result.recall < min_recall:
        failures.append(f"recall {result.recall:.3f} < {min_recall}")
    if min_precision is not None and result.precision < min_precision:
        failures.append(f"precision {result.precision:.3f} < {min_precision}")
    if failures:
        raise _fail("; ".join(failures))


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``evaluate`` to the ``geoincident`` app."""
    app.command("simulate", epilog=SIM_EPILOG)(simulate_command)
    app.command("evaluate")(evaluate_command)
