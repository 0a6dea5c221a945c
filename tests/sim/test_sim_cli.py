"""``simulate`` and ``evaluate`` as registered on a Typer app."""

from __future__ import annotations

import orjson
import pytest
import typer
from typer.testing import CliRunner

from geoincident.sim.cli import register
from geoincident.sim.naive import run_naive


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


runner = CliRunner()


def test_each_command_has_help(app):
    for command in ("simulate", "evaluate"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--help" in result.output


def test_simulate_writes_reports_and_a_truth_file_beside_them(app, tmp_path):
    out = tmp_path / "city.jsonl"
    result = runner.invoke(app, ["simulate", "--seed", "3", "--hours", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    truth = orjson.loads((tmp_path / "city.truth.json").read_bytes())
    assert truth["seed"] == 3 and truth["report_count"] == len(lines) > 0
    assert orjson.loads(lines[0])["id"].startswith("r-3-")


def test_simulate_to_stdout_equals_the_file_and_flags_have_environment_twins(app, tmp_path):
    out = tmp_path / "a.jsonl"
    runner.invoke(app, ["simulate", "--seed", "4", "--hours", "2", "-o", str(out)])
    result = runner.invoke(
        app, ["simulate"], env={"GEOINCIDENT_SEED": "4", "GEOINCIDENT_HOURS": "2"}
    )
    assert result.exit_code == 0
    assert result.stdout_bytes == out.read_bytes()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--families", "bogus=2"], "--families"),
        (["--hours", "0.1"], "--hours"),
        (["--bbox", "1,2,3"], "--bbox"),
        (["--start", "yesterday"], "--start"),
        (["--anchor", "middle"], "--anchor"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--background-per-min", "-1"], "--background-per-min"),
        (["--hotspots", "uptown"], "--hotspots"),
        (["--hotspots", "downtown=0.2"], "--hotspots"),
        (["--outbreak", "power_outage:5000"], "--outbreak"),
        (["--outbreak", "lava:10:5"], "--outbreak"),
        (["--outbreak", "gas_leak:50:10", "--hours", "0.5", "--families", "none"], "--outbreak"),
    ],
)
def test_usage_errors_exit_2_and_name_the_flag(app, args, flag):
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code == 2
    assert flag in result.output


def _simulated(app, tmp_path) -> tuple:
    out = tmp_path / "city.jsonl"
    runner.invoke(app, ["simulate", "--seed", "2", "--hours", "3", "-o", str(out)])
    incidents = tmp_path / "naive.jsonl"
    events = run_naive(out.read_bytes().splitlines())
    incidents.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return incidents, tmp_path / "city.truth.json"


def test_evaluate_prints_a_table_or_one_json_object(app, tmp_path):
    incidents, truth = _simulated(app, tmp_path)
    table = runner.invoke(app, ["evaluate", "--incidents", str(incidents), "--truth", str(truth)])
    assert table.exit_code == 0 and "recall" in table.output and "cell_edge" in table.output
    as_json = runner.invoke(
        app, ["evaluate", "--incidents", str(incidents), "--truth", str(truth), "--json"]
    )
    doc = orjson.loads(as_json.stdout_bytes)
    assert set(doc) >= {
        "recall",
        "precision",
        "decoy_hits",
        "splits",
        "false_incidents",
        "families",
    }


def test_evaluate_exits_1_below_the_minimum_recall_or_precision(app, tmp_path):
    incidents, truth = _simulated(app, tmp_path)
    base = ["evaluate", "--incidents", str(incidents), "--truth", str(truth), "--json"]
    recall = orjson.loads(runner.invoke(app, base).stdout_bytes)["recall"]
    assert recall < 1.0  # the naive baseline misses the edge families
    assert runner.invoke(app, [*base, "--min-recall", str(recall)]).exit_code == 0
    failing = runner.invoke(app, [*base, "--min-recall", "1.0"])
    assert failing.exit_code == 1 and "recall" in failing.stderr
    env = {"GEOINCIDENT_MIN_RECALL": "1.0"}
    assert runner.invoke(app, base, env=env).exit_code == 1


def test_evaluate_of_a_missing_file_is_a_usage_error_and_bad_content_a_failure(app, tmp_path):
    missing = runner.invoke(
        app, ["evaluate", "--incidents", str(tmp_path / "nope"), "--truth", str(tmp_path / "nope")]
    )
    assert missing.exit_code == 2 and "--incidents" in missing.output
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = runner.invoke(app, ["evaluate", "--incidents", str(empty), "--truth", str(bad)])
    assert result.exit_code == 1 and "truth" in result.stderr


BUSY = {
    "--background-per-min": ("GEOINCIDENT_BACKGROUND_PER_MIN", "30"),
    "--hotspots": ("GEOINCIDENT_HOTSPOTS", "downtown,nightlife"),
    "--outbreak": ("GEOINCIDENT_OUTBREAK", "power_outage:300:10"),
}


def test_busy_city_flags_have_environment_twins_and_reach_the_truth(app, tmp_path):
    base = ["simulate", "--seed", "5", "--hours", "1", "--families", "none,true=1"]
    flags = [arg for flag, (_, value) in BUSY.items() for arg in (flag, value)]
    out = tmp_path / "busy.jsonl"
    by_flag = runner.invoke(app, [*base, *flags, "--daily-cycle", "-o", str(out)])
    assert by_flag.exit_code == 0, by_flag.output
    env = {name: value for name, value in BUSY.values()} | {"GEOINCIDENT_DAILY_CYCLE": "1"}
    by_env = runner.invoke(app, base, env=env)
    assert by_env.exit_code == 0, by_env.output
    assert by_env.stdout_bytes == out.read_bytes()
    sparse = runner.invoke(app, base)
    assert len(sparse.stdout_bytes.splitlines()) * 10 < len(by_env.stdout_bytes.splitlines())
    truth = orjson.loads((tmp_path / "busy.truth.json").read_bytes())
    assert truth["background_per_min"] == 30.0 and truth["daily_cycle"]
    assert [h["name"] for h in truth["hotspots"]] == ["downtown", "nightlife"]
    assert truth["counts"]["outbreak"] == 1
    (outbreak,) = [i for i in truth["items"] if i["family"] == "outbreak"]
    assert outbreak["reports"] == 300 and len(outbreak["region"].split(",")) >= 2


def test_evaluate_shows_chance_per_day_and_the_outbreak(app, tmp_path):
    out = tmp_path / "city.jsonl"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--seed",
            "2",
            "--hours",
            "1",
            "--families",
            "none,true=2",
            "--outbreak",
            "gas_leak:400:10",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    incidents = tmp_path / "naive.jsonl"
    events = run_naive(out.read_bytes().splitlines())
    incidents.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    args = ["evaluate", "--incidents", str(incidents), "--truth", str(tmp_path / "city.truth.json")]
    table = runner.invoke(app, args, env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "chance incidents per simulated day" in table.output
    assert "surges on the outbreak" in table.output
    doc = orjson.loads(runner.invoke(app, [*args, "--json"]).stdout_bytes)
    assert doc["duration_h"] == 1.0 and doc["chance_per_day"] == doc["chance_incidents"] * 24
    # The naive baseline knows no surges: the outbreak's clumps, if any, stay unlinked.
    assert doc["outbreak_surges"] == 0 and doc["outbreak_local_linked"] == 0
