"""Fixtures for tests against a real Kafka-protocol broker.

One Tansu broker serves the whole session (it starts in well under a second, but consumer
groups and topics are cheaper to isolate by name than by broker). Tansu keeps everything in
memory and never forgets within a session, so every test names its own topics and groups
through ``topic_name``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from geoincident.stream.broker import EmbeddedBroker

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything in this folder talks to a real broker, whether or not its module says so,
    # so `-m "not integration"` reliably leaves the broker alone.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A running Tansu broker, shared by the session and stopped at its end."""
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as running:
        yield running


@pytest.fixture
def bootstrap(broker: EmbeddedBroker) -> str:
    return broker.bootstrap


@pytest.fixture
def fast_group_options() -> dict[str, int]:
    """aiokafka consumer options that make a group join take ~1 s on Tansu instead of ~5 s.

    Tansu holds a JoinGroup for about half the session timeout (waiting for more members),
    so the 10 s default costs 5 s per join. Faust: ``broker_session_timeout`` likewise.
    """
    return {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of names unique to this test: ``topic_name("reports")`` -> ``reports.<test>.<hex>``.

    Good for consumer group ids too. Only Kafka's legal topic characters are used.
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:80]

    def make(base: str = "topic") -> str:
        return f"{base}.{slug}.{uuid.uuid4().hex[:8]}"

    return make
