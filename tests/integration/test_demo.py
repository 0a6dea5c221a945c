"""`geoincident demo` (what `make demo` runs): a first incident within 60 s, a clean Ctrl-C."""

import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_demo_shows_a_first_incident_within_60_s_and_stops_cleanly_on_sigint(tmp_path):
    demo = subprocess.Popen(
        [sys.executable, "-m", "geoincident.stream.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    output = []
    first_incident_s = None
    started = time.monotonic()
    try:
        while time.monotonic() - started < 60:
            ready, _, _ = select.select([demo.stdout], [], [], 1.0)
            if not ready:
                assert demo.poll() is None, "".join(output)
                continue
            line = demo.stdout.readline().decode()
            output.append(line)
            if "OPENED" in line:
                first_incident_s = time.monotonic() - started
                break
        assert first_incident_s is not None, "no incident within 60 s:\n" + "".join(output)
        broker = re.search(r"broker (127\.0\.0\.1:\d+)", "".join(output)).group(1)
        assert "districts (jurisdictions) from" in "".join(output)
        # the dispatchers' console comes first, and answers
        assert output[0].startswith("console http://127.0.0.1:"), output[0]
        url = re.search(r"console (http://127\.0\.0\.1:\d+/)", output[0]).group(1)
        with urllib.request.urlopen(url + "api/incidents", timeout=10) as answer:
            assert answer.status == 200
        districts = ("Southwest", "South Central", "Southeast", "Northwest", "North Central")
        # the opened line names the incident's district, or "-" outside every district
        assert re.search(r"  (" + "|".join(districts) + r"|Northeast|-)  \d+ reporters", line)
        assert _processes_mentioning(broker), "the demo's processes should be running"
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = "".join(output) + rest.decode()
    assert demo.returncode == 0, text
    assert "stopped." in text and "Traceback" not in text
    assert _processes_mentioning(broker) == [], "orphans left behind"
