"""Replay: file in, incidents out, every line accounted for, byte-identical runs."""

import subprocess
import sys

import orjson

from geoincident.detectors import DetectorParams
from geoincident.stream.replay import ReplaySummary, replay, replay_core
from tests.builders import T0_MS, ring
from tests.builders import line as report_line


def replay_lines(lines, params=None) -> tuple[ReplaySummary, list, list]:
    events, rejects = [], []

    def on_reject(record: bytes) -> None:
        found = orjson.loads(record)
        assert found["partition"] is None and found["received_at"] is None  # a file, no clock
        rejects.append((found["offset"], found["reason"]))

    core = replay_core(params or DetectorParams(), "test.jsonl")
    summary = replay(lines, core, events.append, on_reject)
    return summary, events, rejects


def test_summary_counts_every_outcome():
    good = [report_line(r) for r in ring(5, 40)]
    lines = [
        *good,
        good[0],  # duplicate
        orjson.dumps(
            {
                "id": "u",
                "ts": T0_MS,
                "lat": 47.6,
                "lon": -122.3,
                "reporter": "z",
                "text": "lovely day",
            }
        ),  # unclassified
        b"{broken",
        b'{"id": "x", "ts": 1, "lat": 47.6, "lon": -122.3, "reporter": "z"}',
    ]
    summary, events, rejects = replay_lines(lines)
    assert summary.as_dict() == {
        "read": 9,
        "accepted": 5,
        "rejected": 2,
        "rejected_by_reason": {"bad_timestamp": 1, "invalid_json": 1},
        "duplicate": 1,
        "unclassified": 1,
        "incidents": {"opened": 1, "updated": 0, "resolved": 0},
        "new_reporter_bursts": [],
    }
    assert [position for position, _ in rejects] == [7, 8]


def _write_stream(path):
    reports = ring(6, 60, prefix="a") + ring(
        5, 40, centre=(47.62, -122.35), start_minute=30, prefix="b"
    )
    path.write_bytes(b"\n".join(report_line(r) for r in reports) + b"\n{bad\n")


def test_the_cli_writes_incidents_dlq_and_a_summary(tmp_path):
    source = tmp_path / "reports.jsonl"
    _write_stream(source)
    out = tmp_path / "incidents.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "geoincident.stream.cli", "replay", str(source), "-o", str(out)],
        capture_output=True,
        check=True,
    )
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [e["event"] for e in events].count("opened") == 2
    dlq = [
        orjson.loads(line)
        for line in (tmp_path / "incidents.jsonl.dlq.jsonl").read_bytes().splitlines()
    ]
    assert [d["reason"] for d in dlq] == ["invalid_json"]
    assert dlq[0]["raw"] == "{bad" and dlq[0]["offset"] == 11
    stderr = result.stderr.decode()
    assert "read 12" in stderr and "accepted 11" in stderr and "opened 2" in stderr


def test_two_replays_of_one_file_are_byte_identical(tmp_path):
    source = tmp_path / "reports.jsonl"
    _write_stream(source)
    outputs = []
    for n in range(2):
        out = tmp_path / f"out{n}.jsonl"
        subprocess.run(
            [sys.executable, "-m", "geoincident.stream.cli", "replay", str(source), "-o", str(out)],
            capture_output=True,
            check=True,
        )
        outputs.append(out.read_bytes())
    assert outputs[0] and outputs[0] == outputs[1]


def test_stdin_to_stdout(tmp_path):
    source = tmp_path / "reports.jsonl"
    _write_stream(source)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "geoincident.stream.cli",
            "replay",
            "-",
            "--dlq",
            str(tmp_path / "dlq.jsonl"),
        ],
        input=source.read_bytes(),
        capture_output=True,
        check=True,
    )
    assert result.stdout.count(b'"event":"opened"') == 2
