"""Channels from the HTTP door to the router's own gRPC port, as many as its calls need.

The public port allows `max_streams_per_connection` concurrent calls on one HTTP/2
connection (a limit on abusive clients); past it the server refuses new streams, and the
door's callers would get UNAVAILABLE. The door is one client with every HTTP caller behind
it, so it spreads its calls over connections of its own: each channel here has its own
connection (a local subchannel pool), and a new one opens when every channel carries the
limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from inference.v1 import router_pb2_grpc


@dataclass
class _Connection:
    channel: grpc.aio.Channel
    stub: router_pb2_grpc.RouterStub
    calls: int = 0  # in flight on it


class RouterChannels:
    def __init__(self, address: str, calls_per_channel: int) -> None:
        self._address = address
        self._limit = max(1, calls_per_channel)
        self._connections: list[_Connection] = []

    @contextlib.contextmanager
    def stub(self) -> Iterator[router_pb2_grpc.RouterStub]:
        """A stub on the least busy connection with room (a new one when none has); the
        call made with it must end inside the block."""
        connection = min(self._connections, key=lambda c: c.calls, default=None)
        if connection is None or connection.calls >= self._limit:
            connection = self._open()
        connection.calls += 1
        try:
            yield connection.stub
        finally:
            connection.calls -= 1

    def _open(self) -> _Connection:
        channel = grpc.aio.insecure_channel(
            self._address, options=(("grpc.use_local_subchannel_pool", 1),)
        )
        connection = _Connection(channel, router_pb2_grpc.RouterStub(channel))
        self._connections.append(connection)
        return connection

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        for connection in self._connections:
            await connection.channel.close()
        self._connections.clear()
