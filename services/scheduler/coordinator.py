"""The owner of a request's life in the scheduler, around the pure SchedulerCore.

The path of one request (docs/architecture.md, "One request through the scheduler"):
`acquire` submits its ticket to the core and waits on a future; every core change returns one
`Changes` that `_apply` carries out: a grant resolves the future (the servicer signs it), a
failure raises in the waiting call, each lease's start and end reach `leases_seen` once, commands go
to the workers' sessions. The lease then ends whoever notices first: the worker's report
(`lease_ended`), the router's resubmission naming it (`acquire` with a `Resubmission`), the
worker leaving (`close_session`, silence in `tick`), or its expiry unstarted (`tick`).

Handlers call it from the scheduler's one event loop; each method changes the core with
synchronous calls only (no await in between), so the state changes one call at a time
without locks. Nothing but this class touches the core.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from services.common.errors import DeadlineExceeded, InvalidArgument
from services.scheduler.core.autoscaling import ScalingBounds, ScalingDecision
from services.scheduler.core.changes import Changes, FailReason
from services.scheduler.core.prefix_index import CacheReport
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import (
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    ModelView,
    Outcome,
    PendingRequest,
    Priority,
    Resubmission,
    RevokeLease,
    Ticket,
    Usage,
    WorkerRecord,
    WorkerState,
)
from services.scheduler.sessions import Session, Sessions

log = logging.getLogger(__name__)


class LeaseObserver(Protocol):
    """Hears each lease's start (granted here, or adopted from a worker) and end, once."""

    def lease_started(self, lease: Lease, how: str) -> None: ...
    def lease_ended(self, lease: Lease, outcome: Outcome, usage: Usage | None) -> None: ...
    def lease_reconciled(self, lease: Lease, outcome: Outcome, usage: Usage | None) -> None: ...


@dataclass(frozen=True)
class Grant:
    lease: Lease
    request: PendingRequest  # as admitted: its model and max_tokens may have been degraded
    queue_time_ms: float  # time this request waited in this scheduler's queue


@dataclass
class _Caller:
    """The call that waits for a queued request now (a retry of it takes over)."""

    tenant: str
    admitted: PendingRequest | None = None


@dataclass(frozen=True)
class Snapshot:
    """What GetStatus and the metrics show. A tenant's view has no workers or scaling."""

    queues: dict[Priority, int]
    active_leases: int
    models: list[ModelView]
    workers: list[tuple[WorkerRecord, Session | None]]
    total_slots: int
    scaling: list[tuple[ScalingDecision, ScalingBounds]]
    now: float
    # (worker, model) → prompt blocks the prefix index holds for it
    cached_blocks: dict[tuple[str, str], int] = field(default_factory=dict)


class CoreView(Protocol):
    """The core's read-only views (for status, metrics and tests); changes go through the
    coordinator."""

    decisions: dict[str, ScalingDecision]

    def queued(self) -> int: ...
    def queue_depths(self, tenant: str | None = None) -> dict[Priority, int]: ...
    def active_leases(self, tenant: str | None = None) -> int: ...
    def workers(self) -> list[WorkerRecord]: ...
    def leases(self) -> list[Lease]: ...
    def models(self) -> list[ModelView]: ...
    def cached_blocks(self, worker_id: str, model_id: str) -> int: ...


class Coordinator:
    def __init__(
        self,
        core: SchedulerCore,
        to_message: Callable[[object], object] | None = None,
        leases_seen: LeaseObserver | None = None,
    ) -> None:
        self._core = core
        self._waiters: dict[str, asyncio.Future[Lease]] = {}
        self._callers: dict[str, _Caller] = {}  # who waits for each queued request now
        self.sessions = Sessions(to_message)  # domain command → session message
        self._seen = leases_seen
        # what the scheduler did to requests and workers, for metrics (read and reset)
        self.actions: Counter[str] = Counter()
        self._closing = False  # shutting down: sessions end, leases stay until streams finish

    # -- a request's life ------------------------------------------------------------------
    async def acquire(
        self, ticket: Ticket, timeout_s: float | None, again: Resubmission | None = None
    ) -> Grant:
        """Queues the request and waits for a lease. Raises the core's admission errors,
        DeadlineExceeded when `timeout_s` passes first (or the scheduler sees it cannot be
        met), Unavailable when its model's last worker leaves, ResourceExhausted when it is
        shed for a higher class; on cancellation the request leaves the queue. A request
        resubmitted after its lease ended early is not shed again; the lease it names ends."""
        waiting = self._waiters.get(ticket.request_id)
        if waiting is not None:
            if again is not None and not again.previous_lease_id:  # the router's own retry
                return await self._take_over(ticket, waiting, timeout_s)
            raise InvalidArgument(
                f"request_id {ticket.request_id!r} is already queued; ids must be unique"
            )
        if timeout_s is not None and ticket.deadline is None:
            ticket = replace(ticket, deadline=self._core.clock() + timeout_s)
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters[ticket.request_id] = future
        caller = self._callers[ticket.request_id] = _Caller(ticket.tenant_id)
        asked_at = self._core.clock()
        try:
            if again is not None and again.previous_lease_id:
                changes = self._core.resubmit(ticket, again)
            else:
                changes = self._core.submit(ticket, again.waited_s if again else 0.0)
        except BaseException:
            self._release(ticket.request_id, caller)
            raise
        admitted = caller.admitted = changes.admitted
        assert admitted is not None
        self._apply(changes)
        lease = await self._wait(ticket.request_id, future, caller, timeout_s)
        return Grant(lease, admitted, (self._core.clock() - asked_at) * 1000.0)

    async def _wait(
        self, request_id: str, future: asyncio.Future[Lease], caller: _Caller, timeout_s
    ) -> Lease:
        """Waits for the request's lease as its current caller. One that gives up withdraws
        the request, unless a retry of it took over the wait (then the retry is the caller)."""
        try:
            if future.done():  # granted (or refused) as it was submitted: no timer to set
                return future.result()
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except (TimeoutError, asyncio.CancelledError) as gave_up:
            if self._callers.get(request_id) is caller:
                self._abandon(request_id, future)
            if isinstance(gave_up, TimeoutError):
                raise DeadlineExceeded("deadline passed while waiting in the queue") from None
            raise
        finally:
            self._release(request_id, caller)

    def _release(self, request_id: str, caller: _Caller) -> None:
        """The caller's wait is over: the request is no longer waited for, unless a retry
        took over."""
        if self._callers.get(request_id) is caller:
            self._waiters.pop(request_id, None)
            self._callers.pop(request_id, None)

    async def _take_over(
        self, ticket: Ticket, future: asyncio.Future[Lease], timeout_s: float | None
    ) -> Grant:
        """A router resubmits an Acquire whose first call it lost (a connection that failed
        ambiguously) while that call still waits here: the retry waits for the same queued
        request, in its place, and the first call, if it still runs, no longer withdraws it.
        (A client's second request with a queued id, or another tenant's, is refused.)"""
        first = self._callers[ticket.request_id]
        if first.tenant != ticket.tenant_id or first.admitted is None:
            raise InvalidArgument(
                f"request_id {ticket.request_id!r} is already queued; ids must be unique"
            )
        caller = self._callers[ticket.request_id] = _Caller(ticket.tenant_id, first.admitted)
        asked_at = self._core.clock()
        lease = await self._wait(ticket.request_id, future, caller, timeout_s)
        return Grant(lease, caller.admitted, (self._core.clock() - asked_at) * 1000.0)

    def lease_ended(
        self, worker_id: str, lease_id: str, outcome: Outcome, usage: Usage | None
    ) -> None:
        """A worker reports a lease's end (a second end of the same lease does nothing)."""
        self._apply(self._core.end_lease(lease_id, outcome, usage))

    def lease_started(self, lease: Lease) -> None:
        """A worker reports running a lease this scheduler did not grant (its predecessor
        did, before a restart): adopted."""
        self._apply(self._core.adopt_lease(lease))

    def _abandon(self, request_id: str, future: asyncio.Future[Lease]) -> None:
        granted = None
        if future.done() and not future.cancelled() and future.exception() is None:
            granted = future.result()  # granted just as we gave up: nobody will present it
        elif not future.done():
            future.cancel()
        self._apply(self._core.withdraw(request_id, granted))

    # -- the one place a core change is carried out ----------------------------------------
    def _apply(self, changes: Changes) -> None:
        if self._seen is not None:
            for lease in changes.adopted:
                self._seen.lease_started(lease, "adopted")
            for _, lease in changes.granted:
                self._seen.lease_started(lease, "granted")
            for ended in changes.ended:
                self._seen.lease_ended(ended.lease, ended.outcome, ended.usage)
            for late in changes.reconciled:
                self._seen.lease_reconciled(late.lease, late.outcome, late.usage)
        for failure in changes.failed:
            if failure.reason is not FailReason.ORPHANED:
                self.actions[failure.reason.value] += 1
            future = self._waiters.get(failure.request.request_id)
            if future is not None and not future.done():
                future.set_exception(failure.error)
        for worker_id in changes.removed_workers:
            log.warning("worker %s declared dead: gone silent, or gone and not back", worker_id)
            self.sessions.end(worker_id)
        for command in changes.commands:
            self._send(command)
        unclaimed = []
        for request, lease in changes.granted:
            future = self._waiters.get(request.request_id)
            if future is None or future.done():
                unclaimed.append(lease)
            else:
                future.set_result(lease)
        for lease in unclaimed:  # its caller left as it was granted
            self._apply(self._core.end_lease(lease.lease_id, Outcome.CANCELLED))

    def _send(self, command: object) -> None:
        if isinstance(command, RevokeLease):
            log.info("preempting lease %s (low) for a waiting high request", command.lease_id)
            self.actions["preempted"] += 1
        else:
            log.info("placement: %s", command)
            self.actions[type(command).__name__] += 1
        self.sessions.send(command.worker_id, command)

    # -- periodic work ---------------------------------------------------------------------
    def tick(self) -> None:
        """The core's periodic work (core.SchedulerCore.tick), applied."""
        self._apply(self._core.tick())

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
        caches: Iterable[CacheReport] = (),
        ended: Iterable[tuple[str, Outcome, Usage]] = (),
    ) -> Session:
        """Registers a worker with the leases it runs (the lease table is rebuilt from them
        after a scheduler restart)."""
        session = self.sessions.open(worker_id, device)
        self._apply(
            self._core.register_worker(
                worker_id,
                address,
                gpu_id,
                models,
                loadable,
                memory_budget,
                running,
                caches,
                ended,
            )
        )
        log.info("worker %s registered at %s (%s)", worker_id, address, gpu_id)
        return session

    def heartbeat(
        self,
        session: Session,
        state: WorkerState,
        models: list[ModelSlots],
        device: object,
        reported: list | None = None,
        running: Iterable[str] = (),
        caches: Iterable[CacheReport] = (),
    ) -> bool:
        """False when the worker was declared dead meanwhile: the session must end."""
        if not self.sessions.current(session):
            return False
        session.device = device
        session.models = list(reported or [])
        changes = self._core.heartbeat(session.worker_id, state, models, running, caches)
        self._apply(changes)
        return session.worker_id not in changes.removed_workers

    def close_session(self, session: Session) -> None:
        if not self.sessions.close(session) or self._closing:
            return  # replaced by a newer session of the same worker, or shutting down
        self._apply(self._core.session_closed(session.worker_id))
        log.info("worker %s's session ended", session.worker_id)

    def end_all_sessions(self) -> None:
        """At shutdown: ends every session but keeps leases so in-flight streams finish."""
        self._closing = True
        self.sessions.end_all()

    # -- views -----------------------------------------------------------------------------
    def model(self, model_id: str) -> ModelCatalogEntry:
        """Raises NotFound for a model nobody knows."""
        return self._core.model(model_id)

    def models(self) -> list[ModelView]:
        return self._core.models()

    def now(self) -> float:
        return self._core.clock()

    @property
    def state(self) -> CoreView:
        return self._core

    def snapshot(self, tenant: str = "") -> Snapshot:
        """The fleet's state; with `tenant`, only that tenant's queues and leases."""
        core = self._core
        if tenant:
            views = core.queue_depths(tenant), core.active_leases(tenant), core.models()
            return Snapshot(*views, workers=[], total_slots=0, scaling=[], now=core.clock())
        policy = core.settings.autoscaling
        return Snapshot(
            queues=core.queue_depths(),
            active_leases=core.active_leases(),
            models=core.models(),
            workers=[(r, self.sessions.get(r.worker_id)) for r in core.workers()],
            cached_blocks={
                (r.worker_id, m): core.cached_blocks(r.worker_id, m)
                for r in core.workers()
                for m in r.models
            },
            total_slots=core.total_slots(),
            scaling=[(d, policy.bounds_of(m)) for m, d in sorted(core.decisions.items())],
            now=core.clock(),
        )


async def sweep_forever(coordinator: Coordinator, interval_s: float) -> None:
    """Runs the coordinator's periodic work every `interval_s`. One failing round is logged
    and the next one runs: the sweep never dies silently."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            coordinator.tick()
        except Exception:
            log.exception("scheduler sweep failed; continuing")
