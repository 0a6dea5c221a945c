"""The naive per-event job on Quix Streams, one child process of benchmarks/worker.py.

    python benchmarks/quix_naive.py --bootstrap H:P --topic T --group G --count N --result OUT

Runs in its own virtualenv (benchmarks/worker.py builds it: quixstreams pins an older pydantic
than the project's), so it imports nothing from geoincident. Reads T from the earliest offset
in consumer group G, applies the job to every record, and once N records were handled writes
one JSON object to OUT: how many, the seconds from the first record handled to the N-th (group
join excluded), the seconds from start to the first record, and the peak RSS. Then it stops
the application, which commits the group's offsets.

`make_naive_job()` is also what the stock Faust agent of benchmarks/worker.py runs, so both
frameworks do exactly the same work per report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable


def make_naive_job() -> Callable[[bytes], None]:
    """orjson decode + H3 res-9 cell + a dict update, per report (the "naive job")."""
    import h3
    import orjson

    cells: dict[str, int] = {}
    loads = orjson.loads
    to_cell = h3.latlng_to_cell

    def job(value: bytes) -> None:
        report = loads(value)
        cell = to_cell(report["lat"], report["lon"], 9)
        cells[cell] = cells.get(cell, 0) + 1

    return job


def write_result(path: str, result: dict) -> None:
    """Atomically, so the parent never reads half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(result, handle)
    os.replace(tmp, path)


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss does not: it
    would include the forking parent's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)

    from importlib.metadata import version

    from quixstreams import Application

    started = time.perf_counter()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        loglevel="WARNING",
        use_changelog_topics=False,
        # librdkafka's group join on Tansu takes ~30 s with the defaults.
        consumer_extra_config={
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": 30000,
        },
    )
    topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    job = make_naive_job()
    state: dict = {"n": 0, "first": None, "last": None}
    target = args.count

    def handle(value: bytes) -> None:
        if state["first"] is None:
            state["first"] = time.perf_counter()
        job(value)
        state["n"] += 1
        if state["n"] == target:
            state["last"] = time.perf_counter()
            app.stop()

    sdf = app.dataframe(topic)
    sdf.update(handle)
    app.run()
    if state["last"] is None:
        sys.exit(f"quix: stopped after {state['n']} of {target} records")
    write_result(
        args.result,
        {
            "count": state["n"],
            "seconds": state["last"] - state["first"],
            "startup_s": state["first"] - started,
            "peak_rss": peak_rss_bytes(),
            "versions": {
                "quixstreams": version("quixstreams"),
                "confluent-kafka": version("confluent-kafka"),
            },
        },
    )


if __name__ == "__main__":
    main()
