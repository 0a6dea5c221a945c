"""A Kafka client's request written to a connection that uvloop has closed already (the broker
reset it and aiokafka's reader has not run yet): a connection error its callers retry, as under
asyncio, not a RuntimeError that ends the background task that wrote it (stream/app.py,
guard_kafka_writes). A whole broker outage is tests/integration/test_broker_outage.py."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.admin import ApiVersionRequest

from geoincident.stream.app import guard_kafka_writes


async def _write_after_reset() -> tuple[BaseException | None, bool]:
    """A request sent on a connection whose transport has just been closed under it; returns
    what sending raised and whether the connection still says it is connected."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = AIOKafkaConnection("127.0.0.1", port)
    # a connection as create_conn leaves it, its reader not yet told of the reset
    conn._reader, conn._writer = reader, writer
    conn._read_task = asyncio.ensure_future(asyncio.sleep(3600))
    writer.transport.abort()
    await asyncio.sleep(0.05)
    raised: BaseException | None = None
    try:
        await conn.send(ApiVersionRequest())
    except Exception as error:  # noqa: BLE001 - what it raised is the finding
        raised = error
    connected = conn.connected()
    conn.close()
    server.close()
    await server.wait_closed()
    return raised, connected


def test_a_request_written_to_a_closed_uvloop_transport_is_a_connection_error() -> None:
    guard_kafka_writes()
    raised, connected = uvloop.run(_write_after_reset())
    assert isinstance(raised, KafkaConnectionError), repr(raised)
    assert "broken" in str(raised)
    assert not connected  # closed: the client connects again for the next request


def test_the_guard_is_installed_once() -> None:
    guard_kafka_writes()
    send = AIOKafkaConnection.send
    guard_kafka_writes()
    assert AIOKafkaConnection.send is send


def test_another_runtime_error_is_not_taken_for_a_closed_connection() -> None:
    guard_kafka_writes()

    async def send_unprepared() -> None:
        conn = AIOKafkaConnection("127.0.0.1", 9)
        conn._writer = _OpenWriter()  # type: ignore[assignment]
        conn._versions = {}
        conn.send(_Failing())

    with pytest.raises(RuntimeError, match="not a transport error"):
        asyncio.run(send_unprepared())


class _OpenTransport:
    def is_closing(self) -> bool:
        return False


class _OpenWriter:
    transport = _OpenTransport()


class _Failing:
    def prepare(self, versions: dict) -> None:
        raise RuntimeError("not a transport error")
