"""SchedulerCore: the queue, the lease table and the model catalog behind one pure API.

Every method is synchronous and takes time from the injected clock. The async coordinator
calls it from one event loop and never awaits in the middle of a call, so the state changes
one call at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.common.errors import DeadlineExceeded, NotFound, Unavailable
from services.scheduler.core import deadlines, model_placement, preemption
from services.scheduler.core.admission import AdmissionRules, ServiceRate, Shed
from services.scheduler.core.autoscaling import Autoscaler, ScalingDecision, ScalingPolicy
from services.scheduler.core.leases import LeaseTable, fits
from services.scheduler.core.load_signals import model_loads
from services.scheduler.core.placement import PlacementPolicy
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.types import (
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    PendingRequest,
    Priority,
    WorkerRecord,
    WorkerState,
)


@dataclass(frozen=True)
class WorkerRemoval:
    """What removing a worker left behind."""

    worker_id: str
    reclaimed: list[Lease]  # leases it held, now freed
    orphaned: list[PendingRequest]  # queued requests no remaining worker can serve


@dataclass(frozen=True)
class ModelView:
    entry: ModelCatalogEntry
    ready_workers: int


@dataclass
class SchedulerCore:
    catalog: dict[str, ModelCatalogEntry]
    queue_capacity: int
    heartbeat_timeout_s: float
    clock: Callable[[], float]
    starvation_bound_s: float | None = None  # aging: longest a request waits behind younger
    placement: PlacementPolicy | None = None  # least loaded when None
    rules: AdmissionRules = field(default_factory=AdmissionRules)
    preemption: bool = True  # a waiting high request may stop a running low one
    rate_window_s: float = 30.0  # service rates behind wait estimates cover this long
    arrival_window_s: float = 10.0  # arrival rates behind scaling decisions cover this long
    load_timeout_s: float = 300.0  # a load command not seen in a heartbeat by then is retried
    scaling: ScalingPolicy = field(default_factory=ScalingPolicy)
    # models an actuator starts workers for: with no worker they are queued, not refused
    autoscaled: frozenset[str] = frozenset()
    cold_start_timeout_s: float = 120.0  # longest wait for a model's first worker
    cold_start_margin_s: float = 1.0  # UNAVAILABLE goes out this long before the deadline
    _queue: RequestQueue = field(init=False)
    _leases: LeaseTable = field(init=False)
    _rate: ServiceRate = field(init=False)
    _arrivals: ServiceRate = field(init=False)
    _autoscaler: Autoscaler = field(init=False)
    decisions: dict[str, ScalingDecision] = field(init=False, default_factory=dict)
    _advertised: dict[str, ModelCatalogEntry] = field(init=False, default_factory=dict)
    _shed: list[PendingRequest] = field(init=False, default_factory=list)
    _preempting: dict[str, str] = field(init=False, default_factory=dict)  # lease → model
    _loading: model_placement.PendingLoads = field(init=False)

    def __post_init__(self) -> None:
        self._queue = RequestQueue(self.queue_capacity)
        self._leases = LeaseTable(self.placement)
        self._rate = ServiceRate(self.rate_window_s, self.clock)
        self._arrivals = ServiceRate(self.arrival_window_s, self.clock)
        self._autoscaler = Autoscaler(self.scaling, self.clock)
        self._loading = model_placement.PendingLoads(self.load_timeout_s)

    # -- requests --------------------------------------------------------------------------
    def model(self, model_id: str) -> ModelCatalogEntry:
        """The catalog entry of a model. Raises NotFound for a model nobody knows."""
        entry = self.catalog.get(model_id) or self._advertised.get(model_id)
        if entry is None:
            raise NotFound(f"unknown model {model_id!r}")
        return entry

    def enqueue(
        self,
        request_id: str,
        model_id: str,
        priority: Priority,
        tenant_id: str,
        *,
        prompt_tokens: int = 0,
        max_tokens: int = 0,
        tenant_weight: float = 1.0,
        deadline: float | None = None,
        affinity_key: str = "",
        allow_fallback: bool = False,
    ) -> PendingRequest:
        """Admits a request to the queue, possibly degraded (its model or max_tokens changed:
        read them from the result). Raises NotFound, Unavailable (no worker has or can load
        the model), ResourceExhausted (shed) or DeadlineExceeded (its deadline cannot be met).
        A lower-class request evicted to make room is left for `take_shed`."""
        self.model(model_id)
        now = self.clock()
        self._arrivals.record(model_id)  # offered load, shed or not, for the autoscaler
        if allow_fallback and self._lacks_capacity(model_id, priority, deadline, now):
            fallback = self.rules.fallbacks.get(model_id)
            if fallback and self._available(fallback):
                model_id = fallback
        if not self._available(model_id):
            raise Unavailable(f"no worker is serving model {model_id!r} now")
        queued, capacity = len(self._queue), self.queue_capacity
        if queued >= capacity:
            evicted = self._queue.evict_newest(below=priority)
            if evicted is None:
                raise self._shed_error(model_id, priority, "queue_full")
            self._shed.append(evicted)
        elif self.rules.sheds(priority, queued, capacity):
            raise self._shed_error(model_id, priority, "pressure")
        if deadline is not None and model_id not in self._leases.room() and self._warm(model_id):
            wait = self._rate.wait_s(model_id, self._queue.ahead_of(model_id, priority))
            if wait is not None and now + wait > deadline:
                raise DeadlineExceeded(
                    f"the deadline cannot be met: the estimated wait is {wait:.1f} s"
                )
        pending = PendingRequest(
            request_id,
            model_id,
            priority,
            tenant_id,
            now,
            prompt_tokens=prompt_tokens,
            max_tokens=self.rules.max_tokens(priority, max_tokens, queued, capacity),
            tenant_weight=tenant_weight,
            deadline=deadline,
            affinity_key=affinity_key,
        )
        return self._queue.push(pending)

    def requeue(self, pending: PendingRequest) -> PendingRequest:
        """Puts back a request that held a lease (preempted, or its worker died) at the head
        of its lane, keeping its arrival time. Raises Unavailable when no worker can serve
        its model any more."""
        if not self._available(pending.model_id):
            raise Unavailable(f"no worker is serving model {pending.model_id!r} now")
        return self._queue.push(pending, front=True, force=True)

    def cancel(self, request_id: str) -> bool:
        """Takes a waiting request out of the queue. False if it was not waiting."""
        return self._queue.remove(request_id) is not None

    def dispatch(self) -> list[tuple[PendingRequest, Lease]]:
        """Grants leases to waiting requests, in queue order, while they fit somewhere."""
        granted = []
        while True:
            request = self._queue.pop_next(
                fits(self._leases.room()),
                self.clock(),
                self.starvation_bound_s,
            )
            if request is None:
                return granted
            lease = self._leases.grant(request, self.clock())
            assert lease is not None  # pop_next only returns requests that fit
            granted.append((request, lease))

    def release(self, lease_id: str, completed: bool = False) -> Lease | None:
        """Frees a lease exactly once; None if it was already freed or reclaimed.
        `completed`: the request finished on it (feeds the service-rate estimate)."""
        self._preempting.pop(lease_id, None)
        lease = self._leases.release(lease_id)
        if lease is not None and completed:
            self._rate.record(lease.model_id, self.clock() - lease.granted_at)
        return lease

    def take_shed(self) -> list[PendingRequest]:
        """Requests evicted from the queue to admit higher classes, since the last call."""
        shed, self._shed = self._shed, []
        return shed

    def shed_retry_after_ms(self, model_id: str) -> int:
        ahead = self._queue.ahead_of(model_id, Priority.LOW)
        return self._rate.retry_after_ms(model_id, ahead, self.rules.full_retry_after_ms)

    def drop_late(self) -> list[PendingRequest]:
        """Removes and returns waiting requests that cannot start before their deadline at
        the measured service rate (or whose deadline has passed)."""
        room = self._leases.room()
        return deadlines.take_late(self._queue, room, self._warm, self._rate, self.clock())

    def drop_cold(self) -> list[PendingRequest]:
        """Removes and returns requests waiting for a model no worker serves or is loading
        (scaled to zero, or its workers left) past `cold_start_timeout_s`, or so close to
        their deadline that they must be told now: they get UNAVAILABLE, not a late answer."""
        return deadlines.take_cold(
            self._queue,
            self._warm,
            self.clock(),
            self.cold_start_timeout_s,
            self.cold_start_margin_s,
        )

    def preemptions(self) -> list[Lease]:
        """Low leases to stop so that high requests waiting for their model get slots (see
        core.preemption); each is chosen once, until it is released."""
        if not self.preemption:
            return []
        victims = preemption.choose_victims(self._queue, self._leases, self._preempting)
        self._preempting.update((lease.lease_id, lease.model_id) for lease in victims)
        return victims

    # -- placement of models ---------------------------------------------------------------
    def plan_placement(self) -> list[model_placement.Command]:
        """Load (and unload) commands that give starved models a worker. A load stays
        pending until a heartbeat shows the model on the worker, or `load_timeout_s`."""
        now = self.clock()
        self._loading.expire(self._leases.worker, now)
        waiting = self._queue.models()
        room = self._leases.room()
        starved = {m for m in waiting if m not in room and m not in self._loading}
        if not starved:
            return []
        commands = model_placement.plan(
            self._leases.workers(),
            starved,
            waiting,
            self._loading.models(),
            self._catalog_bytes(),
        )
        self._loading.sent(commands, now)
        return commands

    # -- workers ---------------------------------------------------------------------------
    def register_worker(
        self,
        worker_id: str,
        address: str,
        gpu_id: str,
        models: Iterable[tuple[ModelCatalogEntry, ModelSlots]],
        loadable: dict[str, int] | None = None,
        memory_budget: int = 0,
    ) -> None:
        slots = []
        for entry, model_slots in models:
            if entry.model_id not in self.catalog:
                self._advertised[entry.model_id] = entry
            slots.append(model_slots)
        record = self._leases.upsert_worker(worker_id, address, gpu_id, slots, self.clock())
        record.loadable = dict(loadable or {})
        record.memory_budget = memory_budget

    def heartbeat(
        self, worker_id: str, state: WorkerState, models: Iterable[ModelSlots] | None = None
    ) -> bool:
        """Records a heartbeat. False if the worker is unknown (removed as dead)."""
        if not self._leases.heartbeat(worker_id, self.clock(), state):
            return False
        if models is not None:
            record = self._leases.worker(worker_id)
            assert record is not None
            self._leases.upsert_worker(
                worker_id, record.address, record.gpu_id, models, self.clock()
            )
        return True

    def worker_failed(self, worker_id: str) -> None:
        """A call to the worker failed (connection lost, model fault): no new leases there
        until its next heartbeat (a dead worker sends none and is soon removed)."""
        self._leases.suspect(worker_id)

    def observe_latency(self, worker_id: str, first_token_ms: float) -> None:
        self._leases.observe_latency(worker_id, first_token_ms)

    def remove_worker(self, worker_id: str) -> WorkerRemoval:
        reclaimed = self._leases.remove_worker(worker_id)
        for lease in reclaimed:
            self._preempting.pop(lease.lease_id, None)
        return WorkerRemoval(worker_id, reclaimed, self.take_orphans())

    def take_orphans(self) -> list[PendingRequest]:
        """Removes and returns queued requests whose model no worker serves or can load."""
        return [
            r
            for m in self._queue.models()
            if not self._available(m)
            for r in self._queue.take_waiting(m)
        ]

    def expire_silent_workers(self) -> list[WorkerRemoval]:
        """Removes workers whose last heartbeat is older than the timeout."""
        silent = self._leases.silent_workers(self.clock(), self.heartbeat_timeout_s)
        return [self.remove_worker(worker_id) for worker_id in silent]

    # -- autoscaling -----------------------------------------------------------------------
    def autoscale(self) -> list[ScalingDecision]:
        """Desired worker counts per catalog model (see core.autoscaling); the settled ones
        are kept in `decisions`, what status views, metrics and actuators see."""
        loads = model_loads(
            self._entries().values(),
            self._leases.workers(),
            self._queue.backlog(),
            self.clock(),
            self._arrivals,
            self._rate,
        )
        decided = [self._autoscaler.decide(load) for load in loads]
        self.decisions = {d.model_id: d for d in decided if d.settled}
        return decided

    # -- views -----------------------------------------------------------------------------
    def models(self) -> list[ModelView]:
        entries = self._entries()
        ready = {model_id: 0 for model_id in entries}
        for worker in self._leases.workers():
            for slots in worker.models.values():
                if worker.accepts_leases and slots.ready and slots.model_id in ready:
                    ready[slots.model_id] += 1
        return [ModelView(entries[m], ready[m]) for m in sorted(entries)]

    def queue_depths(self) -> dict[Priority, int]:
        return {p: self._queue.depth(p) for p in Priority}

    def queued(self) -> int:
        return len(self._queue)

    def workers(self) -> list[WorkerRecord]:
        return self._leases.workers()

    def leases(self) -> list[Lease]:
        return self._leases.leases()

    def active_leases(self) -> int:
        return self._leases.active_leases()

    def total_slots(self) -> int:
        return self._leases.total_slots()

    def service_rate(self, model_id: str) -> float | None:
        return self._rate.rate(model_id)

    # -- internals -------------------------------------------------------------------------
    def _available(self, model_id: str) -> bool:
        """Some live worker has the model, is loading it, or could load it; or an actuator
        starts workers for it."""
        if self._warm(model_id) or model_id in self.autoscaled:
            return True
        catalog_bytes = self._catalog_bytes()
        return any(
            model_placement.can_host(w, model_id, catalog_bytes) for w in self._leases.workers()
        )

    def _lacks_capacity(
        self, model_id: str, priority: Priority, deadline: float | None, now: float
    ) -> bool:
        """No worker can take the model, or it has no room and a long queue (past the
        degradation threshold, or longer than the deadline allows)."""
        if not self._available(model_id):
            return True
        if model_id in self._leases.room():
            return False
        if len(self._queue) >= self.rules.degrade_at * self.queue_capacity:
            return True
        wait = self._rate.wait_s(model_id, self._queue.ahead_of(model_id, priority))
        return deadline is not None and wait is not None and now + wait > deadline

    def _shed_error(self, model_id: str, priority: Priority, reason: str) -> Shed:
        why = "queue full" if reason == "queue_full" else f"shedding {priority.name.lower()} load"
        return Shed(
            f"{why}: {len(self._queue)} of {self.queue_capacity} queue places taken "
            f"({priority.name.lower()} priority)",
            self.shed_retry_after_ms(model_id),
            reason,
        )

    def _warm(self, model_id: str) -> bool:
        """Some live worker has the model (ready or loading) or was told to load it."""
        return self._leases.serves(model_id) or model_id in self._loading

    def _entries(self) -> dict[str, ModelCatalogEntry]:
        """Every known model: the catalog, and models workers advertised beyond it."""
        return {**self._advertised, **self.catalog}

    def _catalog_bytes(self) -> dict[str, int]:
        return {m: e.memory_bytes for m, e in self._entries().items() if e.memory_bytes}
