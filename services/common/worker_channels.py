"""Channels to workers, one per address, reused across requests (routers run leases on
workers through them)."""

from __future__ import annotations

import grpc
from inference.v1 import worker_pb2_grpc

from services.common.internal_auth import internal_channel
from services.common.server import CHANNEL_OPTIONS
from services.common.tls import TlsFiles


class WorkerChannels:
    def __init__(self, internal_secret: str = "", tls: TlsFiles | None = None) -> None:
        self._secret = internal_secret
        self._tls = tls
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = internal_channel(
                address, self._secret, CHANNEL_OPTIONS, self._tls, peer_role="worker"
            )
            self._channels[address] = channel
            stub = self._stubs[address] = worker_pb2_grpc.WorkerStub(channel)
        return stub

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
