"""Sybil floods: many accounts from a few devices at one spot (docs/design.md, Independence).

Reporters and devices are joined by a union-find, so a thousand accounts posting from three
phones are three voices, for local incidents and surges alike. Every flood here is big enough
to open a local incident and a surge when its accounts are independent (the controls), so a
flood that opens nothing does so because of who sent it.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable

import orjson
import pytest

from geoincident.detectors import DetectorParams, Report
from geoincident.geo import destination
from tests.builders import MINUTE_MS, SPOT, T0_MS, Driven, line, report
from tests.detectors.test_surge import clock_start

ACCOUNTS = 1000
DEVICES = 3
SOURCES = ("app", "web", "phone", "twitter", "sms")


def flood(
    device_of: Callable[[int, int], str | None] = lambda account, post: f"dev-{account % DEVICES}",
    source_of: Callable[[int, int], str] = lambda account, post: "app",
    posts: int = 1,
    accounts: int = ACCOUNTS,
) -> list[Report]:
    """`accounts` accounts posting `posts` times each within 40 m of one spot over 10 minutes;
    each post's device and source chosen by the callables."""
    rng = random.Random(5)
    reports = []
    total = accounts * posts
    for n in range(total):
        account, post = n % accounts, n // accounts
        lat, lon = destination(*SPOT, rng.uniform(0, 360), rng.uniform(0, 40))
        reports.append(
            report(
                f"sybil-{n}",
                10.0 * n / total,
                lat,
                lon,
                reporter=f"acct-{account}",
                device=device_of(account, post),
                source=source_of(account, post),
            )
        )
    return reports


def drive(reports: list[Report], params: DetectorParams | None = None) -> tuple[Driven, list]:
    """The flood after an hour of event time elsewhere (the surge detector's warm-up is over,
    so surges are judged too), through the worker's core."""
    driven = Driven(params)
    stream = [clock_start(T0_MS - 60 * MINUTE_MS), *reports]
    events = driven.feed(stream) + driven.flush()
    return driven, events


def kinds(events) -> set[tuple[str, str]]:
    return {(event.kind, event.event) for event in events}


def test_a_thousand_accounts_from_three_devices_at_one_spot_open_nothing():
    driven, events = drive(flood())
    assert events == []
    assert driven.detector.counts["accepted"] == ACCOUNTS + 1  # taken in, not dropped
    # control: the same flood with one device per account opens a local incident and a surge
    _, control = drive(flood(device_of=lambda account, post: f"phone-{account}"))
    assert {("local", "opened"), ("surge", "opened")} <= kinds(control)


@pytest.mark.parametrize(
    ("device_of", "source_of", "posts"),
    [
        # every account posts twice, from the next of the three devices each time
        (lambda account, post: f"dev-{(account + post) % DEVICES}", lambda a, p: "app", 2),
        # the three devices post through five channels, each account through two
        (
            lambda account, post: f"dev-{account % DEVICES}",
            lambda account, post: SOURCES[(account + post) % len(SOURCES)],
            2,
        ),
    ],
    ids=["alternating_devices", "more_sources"],
)
def test_variants_of_the_flood_from_three_devices_open_nothing(device_of, source_of, posts):
    _, events = drive(flood(device_of=device_of, source_of=source_of, posts=posts))
    assert events == []


def test_posts_without_a_device_id_are_tied_to_one_only_within_a_window():
    # Every account posts twice: first from one of the three devices, five minutes later with
    # no device id. Inside the local window (15 min) the union-find still sees both posts, so
    # no local incident; the surge's union-find sees only its short window (5 min), which
    # holds only the second posts: a thousand voices, a surge (docs/design.md, Known limits).
    _, events = drive(
        flood(
            device_of=lambda account, post: f"dev-{account % DEVICES}" if post == 0 else None,
            posts=2,
        )
    )
    assert ("surge", "opened") in kinds(events)
    assert not [event for event in events if event.kind == "local"]


def test_without_device_ids_a_thousand_accounts_are_a_thousand_voices():
    # The limit (docs/design.md, Known limits): with no device id nothing ties the accounts
    # together, so they count as independent reporters, open a local incident and, in a warm
    # district, a surge. Device ids, and the source, must come from the intake, not the client.
    _, events = drive(flood(device_of=lambda account, post: None))
    opened = [event for event in events if event.event == "opened"]
    assert {event.kind for event in opened} == {"local", "surge"}
    local = next(event for event in opened if event.kind == "local")
    assert local.independent_reporters == 5  # the first five accounts open it


def test_a_source_weighted_above_one_lets_fewer_devices_validate():
    # A group weighs its highest source weight: three devices posting through a channel worth 2
    # reach 6 >= 5. Weights above 1 trust a channel, so only channels the intake stamps should
    # carry them.
    params = DetectorParams(source_weights={"sensor": 2.0})
    through_sensor = flood(source_of=lambda account, post: "sensor")
    assert drive(through_sensor)[1] == []  # the default weights: three voices
    assert ("local", "opened") in kinds(drive(through_sensor, params)[1])
    two_devices = flood(
        device_of=lambda account, post: f"dev-{account % 2}",
        source_of=lambda account, post: "sensor",
    )
    assert ("local", "opened") not in kinds(drive(two_devices, params)[1])  # 4 < 5


def test_the_replay_command_opens_nothing_for_the_flood(tmp_path):
    source = tmp_path / "flood.jsonl"
    stream = [clock_start(T0_MS - 60 * MINUTE_MS), *flood()]
    source.write_bytes(b"\n".join(line(r) for r in stream) + b"\n")
    out = tmp_path / "incidents.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "geoincident.stream.cli", "replay", str(source), "-o", str(out)],
        capture_output=True,
        check=True,
    )
    stderr = result.stderr.decode()
    assert "accepted 1,001" in stderr and "rejected 0" in stderr
    assert out.read_bytes() == b""
    assert "new-reporter bursts" not in stderr  # three devices: independence handles it
    # the same file with one device per account: the command does open on it
    independent = [clock_start(T0_MS - 60 * MINUTE_MS), *flood(lambda a, p: f"phone-{a}")]
    source.write_bytes(b"\n".join(line(r) for r in independent) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "geoincident.stream.cli", "replay", str(source), "-o", str(out)],
        capture_output=True,
        check=True,
    )
    events = [orjson.loads(raw) for raw in out.read_bytes().splitlines()]
    assert {(e["kind"], e["event"]) for e in events} >= {("local", "opened"), ("surge", "opened")}
    # a thousand first-time reporters on a thousand devices: one burst for an operator
    stderr = result.stderr.decode()
    assert "new-reporter bursts 1 " in stderr
    assert "  category=streetlight_out lat=" in stderr and "reporters=10 devices=10" in stderr
