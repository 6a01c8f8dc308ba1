"""The async shell around SchedulerCore.

Handlers call the coordinator from the scheduler's one event loop; each method changes the
core with synchronous calls only (no await in between), so the state changes one call at a
time without locks. Waiting requests hold a future that `_dispatch` resolves with a lease.

A lease can end early in two ways, both reported to the request's relay through the callback
it registered with `on_revoke`: its worker died (`WORKER_LOST`) or a waiting high request
preempted it (`PREEMPTED`). The relay then puts the request back with `requeue`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    Unavailable,
)
from services.scheduler.core.admission import Shed
from services.scheduler.core.scheduler import SchedulerCore, WorkerRemoval
from services.scheduler.core.types import (
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    PendingRequest,
    Priority,
    WorkerState,
)

log = logging.getLogger(__name__)

# Sentinel put in a session outbox to end the session.
END_SESSION = None
WORKER_LOST = "worker_lost"
PREEMPTED = "preempted"


@dataclass
class Session:
    """One worker's WorkerSession stream: commands to send it, and its latest telemetry."""

    worker_id: str
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    device: object = None  # last DeviceTelemetry message, shown by GetStatus
    models: list = field(default_factory=list)  # last WorkerModel messages, shown by GetStatus


@dataclass(frozen=True)
class Grant:
    lease: Lease
    request: PendingRequest  # as admitted: its model and max_tokens may have been degraded
    queue_time_ms: float


@dataclass
class Events:
    """Counts of what the scheduler did to requests, for metrics (read and reset)."""

    preempted: int = 0
    dropped_late: int = 0
    evicted: int = 0
    cold_expired: int = 0
    commands: list[str] = field(default_factory=list)


class Coordinator:
    def __init__(
        self,
        core: SchedulerCore,
        command_factory: Callable[[object], object] | None = None,
    ) -> None:
        self.core = core
        self._waiters: dict[str, asyncio.Future[Lease]] = {}
        self._sessions: dict[str, Session] = {}
        self._revokers: dict[str, Callable[[str], object]] = {}
        self._command_factory = command_factory  # placement command → session message
        self.revoked: dict[str, str] = {}  # lease → why it ended early
        self.events = Events()
        self._closing = False  # shutting down: sessions end, leases stay until streams finish

    # -- requests --------------------------------------------------------------------------
    async def acquire(
        self,
        request_id: str,
        model_id: str,
        priority: Priority,
        tenant_id: str,
        timeout_s: float | None,
        **details: object,
    ) -> Grant:
        """Queues the request and waits for a lease. Raises the core's admission errors,
        DeadlineExceeded when `timeout_s` passes first (or the scheduler sees it cannot be
        met), Unavailable when its model's last worker leaves, ResourceExhausted when it is
        shed for a higher class; on cancellation the request leaves the queue."""
        if request_id in self._waiters:
            raise InvalidArgument(
                f"request_id {request_id!r} is already queued; ids must be unique"
            )
        if timeout_s is not None:
            details.setdefault("deadline", self.core.clock() + timeout_s)
        pending = self.core.enqueue(request_id, model_id, priority, tenant_id, **details)
        self._fail_shed()
        self.plan_placement()
        return await self._wait(pending, timeout_s)

    async def requeue(self, pending: PendingRequest, timeout_s: float | None) -> Grant:
        """Waits for a new lease for a request whose lease ended early (preempted, or its
        worker died); it goes back at the head of its lane."""
        if pending.request_id in self._waiters:
            raise InvalidArgument(f"request_id {pending.request_id!r} is already queued")
        self.core.requeue(pending)
        return await self._wait(pending, timeout_s)

    async def _wait(self, pending: PendingRequest, timeout_s: float | None) -> Grant:
        request_id = pending.request_id
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        self._dispatch()
        try:
            lease = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            self._abandon(request_id, future)
            raise DeadlineExceeded("deadline passed while waiting in the queue") from None
        except asyncio.CancelledError:
            self._abandon(request_id, future)
            raise
        finally:
            self._waiters.pop(request_id, None)
        return Grant(lease, pending, (self.core.clock() - pending.enqueued_at) * 1000.0)

    def release(self, lease_id: str, completed: bool = False) -> None:
        """Frees a lease (a second call does nothing) and serves the queue."""
        self._revokers.pop(lease_id, None)
        self.revoked.pop(lease_id, None)
        if self.core.release(lease_id, completed) is not None:
            self._dispatch()

    def on_revoke(self, lease_id: str, revoke: Callable[[str], object]) -> None:
        """Registers what to call, with the reason, if the lease ends early."""
        self._revokers[lease_id] = revoke

    def observe_latency(self, worker_id: str, first_token_ms: float) -> None:
        self.core.observe_latency(worker_id, first_token_ms)

    def _abandon(self, request_id: str, future: asyncio.Future[Lease]) -> None:
        self.core.cancel(request_id)
        if future.done() and not future.cancelled() and future.exception() is None:
            self.release(future.result().lease_id)  # granted just as we gave up
        elif not future.done():
            future.cancel()

    def _dispatch(self) -> None:
        for request, lease in self.core.dispatch():
            future = self._waiters.get(request.request_id)
            if future is None or future.done():
                self.release(lease.lease_id)
                continue
            future.set_result(lease)
        for lease in self.core.preemptions():
            log.info("preempting %s (low) for a waiting high request", lease.request_id)
            self.events.preempted += 1
            self._revoke(lease, PREEMPTED)

    def _revoke(self, lease: Lease, reason: str) -> None:
        self.revoked[lease.lease_id] = reason
        revoke = self._revokers.pop(lease.lease_id, None)
        if revoke is not None:
            revoke(reason)

    def _fail(self, requests: list[PendingRequest], error: Callable[[PendingRequest], Exception]):
        for request in requests:
            future = self._waiters.get(request.request_id)
            if future is not None and not future.done():
                future.set_exception(error(request))

    def _fail_shed(self) -> None:
        shed = self.core.take_shed()
        self.events.evicted += len(shed)
        self._fail(
            shed,
            lambda r: Shed(
                "shed from the queue to admit higher-priority requests",
                self.core.shed_retry_after_ms(r.model_id),
                "evicted",
            ),
        )

    # -- periodic work ---------------------------------------------------------------------
    def tick(self) -> None:
        """Declares silent workers dead, drops requests that cannot meet their deadline
        (or whose model got no worker in time), places models that demand waits for, serves
        the queue, and updates the desired worker counts."""
        self.expire_silent_workers()
        cold = self.core.drop_cold()
        self.events.cold_expired += len(cold)
        self._fail(
            cold,
            lambda r: Unavailable(
                f"no worker for model {r.model_id!r} started in time; retry later"
            ),
        )
        late = self.core.drop_late()
        self.events.dropped_late += len(late)
        self._fail(
            late,
            lambda r: DeadlineExceeded(
                "dropped from the queue: its deadline cannot be met at the current service rate"
            ),
        )
        self.plan_placement()
        self._dispatch()
        self.core.autoscale()

    def plan_placement(self) -> None:
        for command in self.core.plan_placement():
            log.info("placement: %s", command)
            self.events.commands.append(type(command).__name__)
            if self._command_factory is not None:
                self.send_command(command.worker_id, self._command_factory(command))

    # -- workers ---------------------------------------------------------------------------
    def open_session(
        self,
        worker_id: str,
        address: str,
        gpu_id: str,
        models: list[tuple[ModelCatalogEntry, ModelSlots]],
        device: object,
        loadable: dict[str, int] | None = None,
        memory_budget: int = 0,
    ) -> Session:
        old = self._sessions.get(worker_id)
        if old is not None:  # a worker that reconnects replaces its old session
            old.outbox.put_nowait(END_SESSION)
        session = Session(worker_id, device=device)
        self._sessions[worker_id] = session
        self.core.register_worker(worker_id, address, gpu_id, models, loadable, memory_budget)
        log.info("worker %s registered at %s (%s)", worker_id, address, gpu_id)
        self.plan_placement()
        self._dispatch()
        return session

    def heartbeat(
        self,
        session: Session,
        state: WorkerState,
        models: list[ModelSlots],
        device: object,
        reported: list | None = None,
    ) -> bool:
        """False when the worker was declared dead meanwhile: the session must end."""
        if self._sessions.get(session.worker_id) is not session:
            return False
        session.device = device
        session.models = list(reported or [])
        alive = self.core.heartbeat(session.worker_id, state, models)
        self._fail_orphans(self.core.take_orphans())
        self._dispatch()
        return alive

    def close_session(self, session: Session) -> None:
        if self._sessions.get(session.worker_id) is not session:
            return  # replaced by a newer session of the same worker
        del self._sessions[session.worker_id]
        if self._closing:
            return
        self._handle_removal(self.core.remove_worker(session.worker_id))
        log.info("worker %s left", session.worker_id)

    def expire_silent_workers(self) -> None:
        for removal in self.core.expire_silent_workers():
            log.warning("worker %s missed its heartbeats: declared dead", removal.worker_id)
            session = self._sessions.pop(removal.worker_id, None)
            if session is not None:
                session.outbox.put_nowait(END_SESSION)
            self._handle_removal(removal)

    def send_command(self, worker_id: str, command: object) -> bool:
        """Queues a WorkerSessionResponse command for a worker. False if it has no session."""
        session = self._sessions.get(worker_id)
        if session is None:
            return False
        session.outbox.put_nowait(command)
        return True

    def end_all_sessions(self) -> None:
        """At shutdown: ends every session but keeps leases so in-flight streams finish."""
        self._closing = True
        for session in self._sessions.values():
            session.outbox.put_nowait(END_SESSION)

    def session(self, worker_id: str) -> Session | None:
        return self._sessions.get(worker_id)

    def _fail_orphans(self, orphaned: list[PendingRequest]) -> None:
        self._fail(
            orphaned, lambda r: Unavailable(f"no worker is serving model {r.model_id!r} now")
        )

    def _handle_removal(self, removal: WorkerRemoval) -> None:
        self._fail_orphans(removal.orphaned)
        for lease in removal.reclaimed:
            self._revoke(lease, WORKER_LOST)
        self._dispatch()


async def sweep_forever(
    coordinator: Coordinator, interval_s: float, on_tick: Callable[[], object] | None = None
) -> None:
    """Runs the coordinator's periodic work, then `on_tick`, every `interval_s`."""
    while True:
        await asyncio.sleep(interval_s)
        coordinator.tick()
        if on_tick is not None:
            on_tick()
