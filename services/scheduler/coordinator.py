"""The async shell around SchedulerCore.

Handlers call the coordinator from the scheduler's one event loop; each method changes the
core with synchronous calls only (no await in between), so the state changes one call at a
time without locks. A waiting request holds a future that `_dispatch` resolves with a lease.

The scheduler grants and decides; it never carries tokens. A lease ends exactly once, whoever
notices first (docs/architecture.md, "The life of a lease"): its worker reports the end over
its session (`lease_ended`), the router resubmits the request naming it (`acquire` with a
`Resubmission`), the worker leaves (`close_session`, silence), or it expires unstarted
(`tick`). Every end reaches `on_lease_end` once. A lease preempted for a waiting high request
is revoked through its worker (a `RevokeLease` command); the worker ends the stream, and the
router resumes the request on a new lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    Unavailable,
)
from services.scheduler.core.admission import Shed
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import (
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    Outcome,
    PendingRequest,
    Priority,
    RevokeLease,
    Usage,
    WorkerRemoval,
    WorkerState,
)

log = logging.getLogger(__name__)

# Sentinel put in a session outbox to end the session.
END_SESSION = None
LeaseEndHook = Callable[[Lease, Outcome, Usage | None], None]


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
    queue_time_ms: float  # time this request waited in this scheduler's queue


@dataclass(frozen=True)
class Resubmission:
    """A request a router submits again (see inference.v1.Resubmission)."""

    waited_s: float = 0.0  # since the router admitted it: keeps its place in arrival order
    generated_tokens: int = 0  # streamed already; they count against max_tokens
    previous_lease_id: str = ""  # empty: it never held a lease (its scheduler went away)
    previous_worker_id: str = ""
    previous_outcome: Outcome = Outcome.LOST
    previous_lease_tokens: int = 0  # streamed under the previous lease


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
        on_lease_end: LeaseEndHook | None = None,
    ) -> None:
        self.core = core
        self._waiters: dict[str, asyncio.Future[Lease]] = {}
        self._sessions: dict[str, Session] = {}
        self._command_factory = command_factory  # domain command → session message
        self._on_lease_end = on_lease_end
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
        resubmission: Resubmission | None = None,
        **details: object,
    ) -> Grant:
        """Queues the request and waits for a lease. Raises the core's admission errors,
        DeadlineExceeded when `timeout_s` passes first (or the scheduler sees it cannot be
        met), Unavailable when its model's last worker leaves, ResourceExhausted when it is
        shed for a higher class; on cancellation the request leaves the queue. A request
        resubmitted after its lease ended early is not shed again; the lease it names ends."""
        if request_id in self._waiters:
            raise InvalidArgument(
                f"request_id {request_id!r} is already queued; ids must be unique"
            )
        if timeout_s is not None:
            details.setdefault("deadline", self.core.clock() + timeout_s)
        again = resubmission or Resubmission()
        if again.previous_lease_id:
            pending = self._resume(request_id, model_id, priority, tenant_id, again, details)
        else:
            pending = self.core.enqueue(
                request_id, model_id, priority, tenant_id, waited_s=again.waited_s, **details
            )
        self._fail_shed()
        self.plan_placement()
        return await self._wait(pending, timeout_s)

    def _resume(
        self,
        request_id: str,
        model_id: str,
        priority: Priority,
        tenant_id: str,
        again: Resubmission,
        details: dict,
    ) -> PendingRequest:
        details.pop("allow_fallback", None)  # it stays on the model it was admitted with
        failed = again.previous_outcome is Outcome.FAILED
        pending = PendingRequest(
            request_id,
            model_id,
            priority,
            tenant_id,
            self.core.clock() - again.waited_s,
            avoid_worker=again.previous_worker_id if failed else "",
            resumed=True,
            resumed_tokens=again.generated_tokens,
            **details,
        )
        self.core.model(model_id)  # NotFound for a model nobody knows
        ended = self.core.resubmitted(
            pending, again.previous_lease_id, again.previous_outcome, again.previous_lease_tokens
        )
        if ended is not None:
            self._lease_ended(ended, again.previous_outcome, None)
        return self.core.resume(pending)

    async def _wait(self, pending: PendingRequest, timeout_s: float | None) -> Grant:
        request_id = pending.request_id
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        asked_at = self.core.clock()
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
        return Grant(lease, pending, (self.core.clock() - asked_at) * 1000.0)

    def lease_ended(
        self, worker_id: str, lease_id: str, outcome: Outcome, usage: Usage | None
    ) -> None:
        """A worker reports a lease's end (a second end of the same lease does nothing)."""
        lease = self.core.end_lease(lease_id, outcome, usage)
        if lease is not None:
            self._lease_ended(lease, outcome, usage)
            self._dispatch()

    def _lease_ended(self, lease: Lease, outcome: Outcome, usage: Usage | None) -> None:
        if self._on_lease_end is not None:
            self._on_lease_end(lease, outcome, usage)

    def _leases_ended(self, leases: Iterable[Lease], outcome: Outcome) -> None:
        for lease in leases:
            self._lease_ended(lease, outcome, None)

    def _abandon(self, request_id: str, future: asyncio.Future[Lease]) -> None:
        self.core.cancel(request_id)
        if future.done() and not future.cancelled() and future.exception() is None:
            lease = future.result()  # granted just as we gave up: nobody will present it
            self.lease_ended(lease.worker_id, lease.lease_id, Outcome.CANCELLED, None)
        elif not future.done():
            future.cancel()

    def _dispatch(self) -> None:
        for request, lease in self.core.dispatch():
            future = self._waiters.get(request.request_id)
            if future is None or future.done():
                self.lease_ended(lease.worker_id, lease.lease_id, Outcome.CANCELLED, None)
                continue
            future.set_result(lease)
        for lease in self.core.preemptions():
            log.info("preempting %s (low) for a waiting high request", lease.request_id)
            self.events.preempted += 1
            self.send_command(lease.worker_id, RevokeLease(lease.worker_id, lease.lease_id))

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
        """Declares silent workers dead, ends leases never presented in time, drops requests
        that cannot meet their deadline (or whose model got no worker in time), places models
        that demand waits for, serves the queue, and updates the desired worker counts."""
        self.expire_silent_workers()
        self._leases_ended(self.core.expire_unstarted(), Outcome.EXPIRED)
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
            self.send_command(command.worker_id, command)

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
        running: Iterable[Lease] = (),
    ) -> Session:
        """Registers a worker with the leases it runs (the lease table is rebuilt from them
        after a scheduler restart)."""
        old = self._sessions.get(worker_id)
        if old is not None:  # a worker that reconnects replaces its old session
            old.outbox.put_nowait(END_SESSION)
        session = Session(worker_id, device=device)
        self._sessions[worker_id] = session
        gone = self.core.register_worker(
            worker_id, address, gpu_id, models, loadable, memory_budget, running
        )
        self._leases_ended(gone, Outcome.LOST)
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
        running: Iterable[str] = (),
    ) -> bool:
        """False when the worker was declared dead meanwhile: the session must end."""
        if self._sessions.get(session.worker_id) is not session:
            return False
        session.device = device
        session.models = list(reported or [])
        alive = self.core.heartbeat(session.worker_id, state, models, running)
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
        """Queues a command (domain object) for a worker. False if it has no session."""
        session = self._sessions.get(worker_id)
        if session is None:
            return False
        factory = self._command_factory
        session.outbox.put_nowait(factory(command) if factory is not None else command)
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
        self._leases_ended(removal.reclaimed, Outcome.LOST)
        self._dispatch()


async def sweep_forever(
    coordinator: Coordinator, interval_s: float, on_tick: Callable[[], object] | None = None
) -> None:
    """Runs the coordinator's periodic work, then `on_tick`, every `interval_s`. One failing
    round is logged and the next one runs: the sweep never dies silently."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            coordinator.tick()
            if on_tick is not None:
                on_tick()
        except Exception:
            log.exception("scheduler sweep failed; continuing")
