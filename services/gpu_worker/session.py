"""The worker's side of Scheduler.WorkerSession: register, heartbeat, obey commands.

Reconnects with backoff whenever the stream breaks (scheduler restart, network), registering
again each time, so the scheduler may come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common.internal_auth import internal_channel
from services.common.server import CHANNEL_OPTIONS
from services.common.tls import TlsFiles

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0


class SchedulerSession:
    def __init__(
        self,
        scheduler_address: str,
        registration: Callable[[], scheduler_pb2.WorkerSessionRequest],
        heartbeat: Callable[[int], scheduler_pb2.WorkerSessionRequest],
        on_command: Callable[[str, str], None],
        internal_secret: str = "",
        tls: TlsFiles | None = None,
    ) -> None:
        self._secret = internal_secret
        self._tls = tls
        self._address = scheduler_address
        self._registration = registration
        self._heartbeat = heartbeat
        self._on_command = on_command
        self._interval_s = 1.0
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever())

    def send_heartbeat_now(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run_forever(self) -> None:
        backoff = MIN_BACKOFF_S
        channel = internal_channel(self._address, self._secret, CHANNEL_OPTIONS, self._tls)
        async with channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            while True:
                try:
                    await self._session(stub)
                    backoff = MIN_BACKOFF_S  # the scheduler ended the session cleanly
                except grpc.aio.AioRpcError as exc:
                    log.warning(
                        "scheduler session failed (%s); retrying in %.1fs", exc.code().name, backoff
                    )
                finally:
                    self.connected.clear()
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _session(self, stub: scheduler_pb2_grpc.SchedulerStub) -> None:
        call = stub.WorkerSession(self._outgoing())
        async for command in call:
            kind = command.WhichOneof("command")
            if kind == "accepted":
                self._interval_s = max(0.05, command.accepted.heartbeat_interval_ms / 1000.0)
                self._wake.set()  # first heartbeat now, then on the scheduler's interval
                self.connected.set()
                log.info("registered with the scheduler at %s", self._address)
            elif kind == "drain":
                self._on_command(kind, command.drain.reason)
            elif kind in ("load_model", "unload_model"):
                self._on_command(kind, getattr(command, kind).model_id)
            else:
                log.warning("scheduler command %s is not supported by this worker", kind)

    async def _outgoing(self) -> AsyncIterator[scheduler_pb2.WorkerSessionRequest]:
        yield self._registration()
        sequence = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            sequence += 1
            yield self._heartbeat(sequence)
