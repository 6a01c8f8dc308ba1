"""The worker's side of Scheduler.WorkerSession: register, heartbeat, report lease ends,
obey commands. A heartbeat goes every interval when its report changed, and otherwise every
`quiet_heartbeats + 1` intervals (`QuietHeartbeats`, as the scheduler accepted the session).

Reconnects whenever the stream breaks (scheduler restart, network), within a second or so
(bounded backoff), registering again each time with the leases it runs, so the scheduler may
come and go without losing them. Reports queued while no session is up are dropped: the next
registration says what runs then, and repeats the lease ends not known delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common.internal_auth import internal_channel
from services.common.lease_token import LeaseKeyError
from services.common.server import SESSION_CHANNEL_OPTIONS
from services.common.tls import TlsFiles
from services.gpu_worker import convert
from services.gpu_worker.commands import Command
from services.gpu_worker.quiet_heartbeats import QuietHeartbeats

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0  # a restarted scheduler hears from every worker within about a second
HEARTBEAT = object()  # in the outbox: send a heartbeat now
CLOSED = object()  # in a session's outbox: the session is over
INTERVAL = object()  # an interval passed: a heartbeat, unless the report did not change
REGISTRATION_TIMEOUT_S = 5.0
# A lease end sent on a session that stayed up this long after is taken as delivered (a
# broken transport is found within 4 s); until then every registration tells it again.
DELIVERED_S = 10.0
MAX_UNDELIVERED = 4096  # lease ends kept to be told again, at most


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
        self._quiet = QuietHeartbeats()
        self._batch_ends = False  # the scheduler takes several lease ends in one message
        self._open_batch: list | None = None  # lease ends queued in a row, still joinable
        # lease ends not known delivered (when each was reported), the oldest first
        self._undelivered: deque[tuple[float, scheduler_pb2.LeaseEnded]] = deque(
            maxlen=MAX_UNDELIVERED
        )
        self._up_since: float | None = None  # when the current session was accepted
        self._outbox: asyncio.Queue = asyncio.Queue()
        self.connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopped = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever())

    def send_heartbeat_now(self) -> None:
        self._outbox.put_nowait(HEARTBEAT)

    def report(self, message: scheduler_pb2.WorkerSessionRequest) -> None:
        """Sends a message (a lease's end) on the current session, right away. Lease ends
        reported in a row before the first of them is sent go in one message (one engine
        step often ends several), where the scheduler takes them so."""
        if message.HasField("lease_ended"):
            self._keep_until_delivered(message.lease_ended)
            if self._batch_ends:
                if self._open_batch is None:
                    self._open_batch = []
                    self._outbox.put_nowait(self._open_batch)
                self._open_batch.append(message.lease_ended)
                return
        self._open_batch = None  # what follows goes after this message, in order
        self._outbox.put_nowait(message)

    def _keep_until_delivered(self, ended: scheduler_pb2.LeaseEnded) -> None:
        """Keeps a lease's end to tell it again at the next registration, until a session
        that was up when it went (or that began after) has lasted DELIVERED_S since."""
        now, kept, up_since = time.monotonic(), self._undelivered, self._up_since
        while kept and up_since is not None and now - max(kept[0][0], up_since) > DELIVERED_S:
            kept.popleft()
        kept.append((now, ended))

    def _registration_now(self) -> scheduler_pb2.WorkerSessionRequest:
        """The registration, with the lease ends that may not have arrived."""
        message = self._registration()
        message.registration.ended.extend(ended for _, ended in self._undelivered)
        return message

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
            self._address, self._secret, SESSION_CHANNEL_OPTIONS, self._tls, peer_role="scheduler"
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
                    self._up_since = None
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _session(self, stub: scheduler_pb2_grpc.SchedulerStub) -> None:
        # this session's own outbox: what the last one did not send is stale, and its
        # request generator, which gRPC may leave running after the call ended, reads only its
        # own (it once took the next session's first heartbeat) and stops at CLOSED
        outbox = self._outbox = asyncio.Queue()
        self._open_batch, self._batch_ends = None, False  # until this scheduler says
        call = stub.WorkerSession(self._outgoing(outbox))
        try:
            try:  # registration has a deadline: a scheduler that does not answer is retried
                command = await asyncio.wait_for(call.read(), REGISTRATION_TIMEOUT_S)
            except TimeoutError:
                log.warning("the scheduler did not accept the registration in time; retrying")
                return
            while command is not grpc.aio.EOF:
                self._obey(command)
                command = await call.read()
        finally:
            call.cancel()  # a no-op once the scheduler ended it
            outbox.put_nowait(CLOSED)

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
            self._quiet.restart(command.accepted.quiet_heartbeats)
            self._batch_ends = command.accepted.batched_lease_ends
            self._up_since = time.monotonic()
            if self._on_accepted is not None:
                self._on_accepted(command.accepted)
            self.send_heartbeat_now()  # first heartbeat now, then on the scheduler's interval
            self.connected.set()
            log.info("registered with the scheduler at %s", self._address)
        elif (typed := convert.command(command)) is not None:
            self._on_command(typed)
        else:
            log.warning("scheduler command %s is not supported by this worker", kind)

    async def _outgoing(
        self, outbox: asyncio.Queue
    ) -> AsyncIterator[scheduler_pb2.WorkerSessionRequest]:
        yield self._registration_now()
        loop = asyncio.get_running_loop()
        sequence, due = 0, loop.time() + self._interval_s
        while True:
            item = INTERVAL
            with contextlib.suppress(TimeoutError):
                item = await asyncio.wait_for(outbox.get(), max(0.0, due - loop.time()))
            if item is CLOSED:
                return
            if isinstance(item, list):  # lease ends reported in a row
                if item is self._open_batch:
                    self._open_batch = None  # sent now: later ends start another
                yield lease_ends_message(item)
                continue
            if item is not HEARTBEAT and item is not INTERVAL:
                yield item
                continue
            due = loop.time() + self._interval_s
            beat = self._heartbeat(sequence + 1)
            if self._quiet.worth_sending(beat.heartbeat, forced=item is HEARTBEAT):
                sequence += 1
                yield beat


def lease_ends_message(
    ended: list[scheduler_pb2.LeaseEnded],
) -> scheduler_pb2.WorkerSessionRequest:
    """Lease ends reported in a row: one alone as `lease_ended`, several as `lease_endings`."""
    if len(ended) == 1:
        return scheduler_pb2.WorkerSessionRequest(lease_ended=ended[0])
    return scheduler_pb2.WorkerSessionRequest(lease_endings=scheduler_pb2.LeaseEndings(ended=ended))
