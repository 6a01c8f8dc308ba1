"""Channels to workers, one per address, reused across requests (routers run leases on
workers through them). A channel unused for `idle_close_s` is closed: under autoscaling,
workers come and go, and a router would otherwise keep a connection (a file descriptor and a
reconnecting subchannel) to every address it ever served. Every call on a channel has a
deadline (the request's, at most the router's `max_deadline_s`), so a channel idle for longer
than that carries no call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from inference.v1 import worker_pb2_grpc

from services.common.internal_auth import internal_channel
from services.common.server import TOKEN_PATH_OPTIONS
from services.common.tls import TlsFiles

IDLE_CLOSE_S = 900.0  # above the longest deadline a router allows (600 s by default)
SWEEP_EVERY_S = 60.0


class WorkerChannels:
    def __init__(
        self,
        internal_secret: str = "",
        tls: TlsFiles | None = None,
        idle_close_s: float = IDLE_CLOSE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret = internal_secret
        self._tls = tls
        self._idle_close_s = idle_close_s
        self._clock = clock
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._used: dict[str, float] = {}  # address → when its stub was last asked for
        self._swept_at = clock()
        self._closing: set[asyncio.Task] = set()

    def stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        now = self._clock()
        self._used[address] = now
        stub = self._stubs.get(address)
        if stub is None:
            channel = internal_channel(
                address, self._secret, TOKEN_PATH_OPTIONS, self._tls, peer_role="worker"
            )
            self._channels[address] = channel
            stub = self._stubs[address] = worker_pb2_grpc.WorkerStub(channel)
        if now - self._swept_at >= min(SWEEP_EVERY_S, self._idle_close_s):
            self._swept_at = now
            self._close_idle(now)
        return stub

    def addresses(self) -> list[str]:
        """Addresses with an open channel."""
        return list(self._channels)

    def _close_idle(self, now: float) -> None:
        for address in [a for a, t in self._used.items() if now - t > self._idle_close_s]:
            del self._used[address], self._stubs[address]
            task = asyncio.ensure_future(self._channels.pop(address).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
        self._used.clear()
