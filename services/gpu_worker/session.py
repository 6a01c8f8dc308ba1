"""The worker's side of Scheduler.WorkerSession: register, heartbeat, report lease ends,
obey commands.

Reconnects whenever the stream breaks (scheduler restart, network), within a second or so
(bounded backoff), registering again each time with the leases it runs, so the scheduler may
come and go without losing them. Reports queued while no session is up are dropped: the next
registration says what runs then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common.internal_auth import internal_channel
from services.common.lease_token import LeaseKeyError
from services.common.server import CHANNEL_OPTIONS
from services.common.tls import TlsFiles
from services.gpu_worker import convert
from services.gpu_worker.commands import Command

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0  # a restarted scheduler hears from every worker within about a second
HEARTBEAT = object()  # in the outbox: send a heartbeat now
REGISTRATION_TIMEOUT_S = 5.0


class SchedulerSession:
    def __init__(
        self,
        scheduler_address: str,
        registration: Callable[[], scheduler_pb2.WorkerSessionRequest],
        heartbeat: Callable[[int], scheduler_pb2.WorkerSessionRequest],
        on_command: Callable[[Command], None],
        internal_secret: str = "",
        tls: TlsFiles | None = None,
        on_accepted: Callable[[scheduler_pb2.SessionAccepted], None] | None = None,
    ) -> None:
        self._on_accepted = on_accepted
        self._secret = internal_secret
        self._tls = tls
        self._address = scheduler_address
        self._registration = registration
        self._heartbeat = heartbeat
        self._on_command = on_command
        self._interval_s = 1.0
        self._outbox: asyncio.Queue = asyncio.Queue()
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopped = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever())

    def send_heartbeat_now(self) -> None:
        self._outbox.put_nowait(HEARTBEAT)

    def report(self, message: scheduler_pb2.WorkerSessionRequest) -> None:
        """Sends a message (a lease's end) on the current session, right away."""
        self._outbox.put_nowait(message)

    async def stop(self) -> None:
        """Ends the session. Cancels until the task is done: on Python 3.11 a cancellation
        that meets a finishing `wait_for` can be lost."""
        self._stopped = True
        while self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)

    async def _run_forever(self) -> None:
        backoff = MIN_BACKOFF_S
        channel = internal_channel(
            self._address, self._secret, CHANNEL_OPTIONS, self._tls, peer_role="scheduler"
        )
        async with channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            while not self._stopped:
                try:
                    await self._session(stub)
                    backoff = MIN_BACKOFF_S  # the scheduler ended the session cleanly
                except LeaseKeyError as exc:
                    log.error("refused the scheduler at %s: %s", self._address, exc)
                except grpc.aio.AioRpcError as exc:
                    log.warning(
                        "scheduler session failed (%s); retrying in %.1fs", exc.code().name, backoff
                    )
                except Exception:
                    log.exception("scheduler session broke; retrying in %.1fs", backoff)
                finally:
                    self.connected.clear()
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _session(self, stub: scheduler_pb2_grpc.SchedulerStub) -> None:
        call = stub.WorkerSession(self._outgoing())
        try:  # registration has a deadline: a scheduler that does not answer is retried
            first = await asyncio.wait_for(call.read(), REGISTRATION_TIMEOUT_S)
        except TimeoutError:
            call.cancel()
            log.warning("the scheduler did not accept the registration in time; retrying")
            return
        command = first
        try:
            while command is not grpc.aio.EOF:
                self._obey(command)
                command = await call.read()
        finally:
            call.cancel()  # a no-op once the scheduler ended it

    def _obey(self, command: scheduler_pb2.WorkerSessionResponse) -> None:
        """Acts on one message of the scheduler (a command that fails is logged, not fatal)."""
        kind = command.WhichOneof("command")
        try:
            self._act(kind, command)
        except LeaseKeyError:
            raise  # a scheduler whose leases this worker would refuse: no session with it
        except Exception:
            log.exception("scheduler command %s failed", kind)

    def _act(self, kind: str | None, command: scheduler_pb2.WorkerSessionResponse) -> None:
        if kind == "accepted":
            self._interval_s = max(0.05, command.accepted.heartbeat_interval_ms / 1000.0)
            if self._on_accepted is not None:
                self._on_accepted(command.accepted)
            self.send_heartbeat_now()  # first heartbeat now, then on the scheduler's interval
            self.connected.set()
            log.info("registered with the scheduler at %s", self._address)
        elif (typed := convert.command(command)) is not None:
            self._on_command(typed)
        else:
            log.warning("scheduler command %s is not supported by this worker", kind)

    async def _outgoing(self) -> AsyncIterator[scheduler_pb2.WorkerSessionRequest]:
        self._outbox = asyncio.Queue()  # what the last session did not send is stale
        yield self._registration()
        loop = asyncio.get_running_loop()
        sequence, due = 0, loop.time() + self._interval_s
        while True:
            item = HEARTBEAT
            with contextlib.suppress(TimeoutError):
                item = await asyncio.wait_for(self._outbox.get(), max(0.0, due - loop.time()))
            if item is not HEARTBEAT:
                yield item
                continue
            sequence += 1
            due = loop.time() + self._interval_s
            yield self._heartbeat(sequence)
