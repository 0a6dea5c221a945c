"""Broker outages for the integration tests: a TCP relay between the worker and its own broker
that can be cut (open connections reset, new ones refused) and restored, and a broker process
that can be frozen (SIGSTOP) and thawed (SIGCONT).

Tansu keeps everything in memory, so stopping and starting its process would lose every topic,
offset and group: not what a real broker does across a restart. The relay gives the client's
view of a broker that was stopped and started again (its connections reset, its port closed,
then open again, its data intact); the freeze gives the view of a broker that hangs (a network
partition, a stalled machine): connections stay open and nothing answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from geoincident.stream.broker import EmbeddedBroker, free_tcp_port

_HOST = "127.0.0.1"


class TcpProxy:
    """Relays TCP connections from a loopback port to a target port, in a thread of its own."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_tcp_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self.connections = 0  # accepted since the start

    @property
    def address(self) -> str:
        return f"{_HOST}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        self._call(self._open())
        return self

    def cut(self) -> None:
        """Reset every relayed connection (RST to both sides) and close the port, so that
        connecting is refused until restore()."""
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._open())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- in the relay's loop ---------------------------------------------------------------

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._relay, _HOST, self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    # linger 0: close() sends RST, as a host whose process died does
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        self._transports.clear()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_r, broker_w = await asyncio.open_connection(_HOST, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        pair = (client_w.transport, broker_w.transport)
        self._transports.update(pair)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        try:
            await asyncio.gather(pump(client_r, broker_w), pump(broker_r, client_w))
        finally:
            self._transports.difference_update(pair)


class ProxiedBroker:
    """A Tansu broker of its own that clients reach only through a TcpProxy: it advertises
    the relay's port in its metadata, so every connection (bootstrap and per node) crosses
    the relay. `bootstrap` is the relay's address."""

    def __init__(self, log_path: Path) -> None:
        self.proxy_port = free_tcp_port()
        self.broker_port = free_tcp_port()
        self.broker = EmbeddedBroker(
            port=self.broker_port, log_path=log_path, advertised_port=self.proxy_port
        )
        self.proxy: TcpProxy | None = None

    @property
    def bootstrap(self) -> str:
        assert self.proxy is not None
        return self.proxy.address

    @property
    def pid(self) -> int:
        pid = self.broker.pid
        assert pid is not None
        return pid

    def __enter__(self) -> Self:
        self.proxy = TcpProxy(self.broker_port, self.proxy_port).start()
        try:
            self.broker.start()
        except BaseException:
            self.proxy.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.broker.stop()
        finally:
            if self.proxy is not None:
                self.proxy.stop()
