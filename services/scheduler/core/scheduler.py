"""SchedulerCore: the queue, the lease table and the model catalog behind one pure API.

Every method is synchronous and takes time from the injected clock. The async coordinator
calls it from one event loop and never awaits in the middle of a call, so the state changes
one call at a time.

After a start the core is *recovering* for `recovery_s`: workers re-register with the leases
they run (the table is rebuilt from them) and routers resubmit the requests they held, which
take their places by arrival time; nothing is granted, and a model without a worker yet is
not refused, until the window ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.common.errors import NotFound, Unavailable
from services.scheduler.core import deadlines, model_placement, preemption
from services.scheduler.core.admission import AdmissionControl, AdmissionRules
from services.scheduler.core.autoscaling import Autoscaler, ScalingDecision, ScalingPolicy
from services.scheduler.core.leases import LeaseTable, fits
from services.scheduler.core.ledger import Ledger
from services.scheduler.core.load_signals import model_loads
from services.scheduler.core.placement import PlacementPolicy
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.rates import ServiceRate
from services.scheduler.core.types import (
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    ModelView,
    Outcome,
    PendingRequest,
    Priority,
    Usage,
    WorkerRecord,
    WorkerRemoval,
    WorkerState,
)


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
    lease_start_timeout_s: float = 10.0  # a lease not presented to its worker by then expires
    recovery_s: float = 0.0  # after a start: no grants while workers and routers come back
    lease_prefix: str = "lease"  # lease ids start with it: unique per scheduler start
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
    _ledger: Ledger = field(init=False)
    _started_at: float = field(init=False)
    _admission: AdmissionControl = field(init=False)

    def __post_init__(self) -> None:
        self._queue = RequestQueue(self.queue_capacity)
        self._leases = LeaseTable(self.placement, self.lease_prefix)
        self._ledger = Ledger(self._queue.fair)
        self._started_at = self.clock()
        self._rate = ServiceRate(self.rate_window_s, self.clock)
        self._arrivals = ServiceRate(self.arrival_window_s, self.clock)
        self._admission = AdmissionControl(
            self.rules, self._queue, self._leases, self._rate, self._available, self._warm
        )
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
        waited_s: float = 0.0,
    ) -> PendingRequest:
        """Admits a request to the queue, possibly degraded (its model or max_tokens changed:
        read them from the result). Raises NotFound, Unavailable (no worker has or can load
        the model), ResourceExhausted (shed) or DeadlineExceeded (its deadline cannot be met).
        A lower-class request evicted to make room is left for `take_shed`. `waited_s`: how
        long ago a router first admitted it (resubmitted after a scheduler restart): it takes
        its place in arrival order."""
        self.model(model_id)
        now = self.clock()
        self._arrivals.record(model_id)  # offered load, shed or not, for the autoscaler
        admitted = self._admission.admit(
            model_id, priority, max_tokens, deadline, allow_fallback, now
        )
        if admitted.evicted is not None:
            self._shed.append(admitted.evicted)
        pending = PendingRequest(
            request_id,
            admitted.model_id,
            priority,
            tenant_id,
            now - max(0.0, waited_s),
            prompt_tokens=prompt_tokens,
            max_tokens=admitted.max_tokens,
            tenant_weight=tenant_weight,
            deadline=deadline,
            affinity_key=affinity_key,
        )
        return self._queue.push(pending)

    def resume(self, pending: PendingRequest) -> PendingRequest:
        """Queues again a request that held a lease (preempted, or its worker lost): it was
        admitted already, so it is not shed, and it takes its place by arrival time (at the
        head of its lane, in practice). `pending.resumed` must be set. Raises Unavailable
        when no worker can serve its model any more."""
        if not self._available(pending.model_id):
            raise Unavailable(f"no worker is serving model {pending.model_id!r} now")
        return self._queue.push(pending, force=True)

    def cancel(self, request_id: str) -> bool:
        """Takes a waiting request out of the queue. False if it was not waiting."""
        return self._queue.remove(request_id) is not None

    def dispatch(self) -> list[tuple[PendingRequest, Lease]]:
        """Grants leases to waiting requests, in queue order, while they fit somewhere
        (none while recovering)."""
        granted: list[tuple[PendingRequest, Lease]] = []
        if self.recovering():
            return granted
        while True:
            now = self.clock()
            request = self._queue.pop_next(fits(self._leases.room()), now, self.starvation_bound_s)
            if request is None:
                return granted
            lease = self._leases.grant(request, now, now + self.lease_start_timeout_s)
            assert lease is not None  # pop_next only returns requests that fit
            granted.append((request, lease))

    def end_lease(
        self, lease_id: str, outcome: Outcome, usage: Usage | None = None
    ) -> Lease | None:
        """Ends a lease exactly once, whoever noticed first; None if it had ended already.
        `usage`: what its worker reported (None: nobody did). Frees its slot, corrects the
        fairness charge (core.ledger) and feeds the service-rate and latency estimates."""
        self._preempting.pop(lease_id, None)
        lease = self._leases.release(lease_id)
        if lease is None:
            return None
        if outcome is Outcome.COMPLETED:
            self._rate.record(lease.model_id, self.clock() - lease.granted_at)
        if usage is not None and usage.time_to_first_token_ms > 0:
            self._leases.observe_latency(lease.worker_id, usage.time_to_first_token_ms)
        self._ledger.settle(lease, usage)
        return lease

    def resubmitted(
        self, request: PendingRequest, lease_id: str, outcome: Outcome, tokens: int
    ) -> Lease | None:
        """A router resubmits `request`, whose lease `lease_id` ended early as it saw it
        (`outcome`), after `tokens` were streamed under it. Ends that lease if it is still
        held (returned) and charges its tokens once; a failed worker takes no new lease
        until its next heartbeat."""
        lease = self._leases.lease(lease_id)
        if outcome is Outcome.FAILED and lease is not None:
            self.worker_failed(lease.worker_id)
        if lease is not None:
            return self.end_lease(lease_id, Outcome.LOST, Usage(completion_tokens=tokens))
        self._ledger.settle_resubmitted(request, lease_id, tokens)
        return None

    def expire_unstarted(self) -> list[Lease]:
        """Ends the leases granted but never presented to their worker in time."""
        expired = (self.end_lease(i, Outcome.EXPIRED) for i in self._leases.expired(self.clock()))
        return [lease for lease in expired if lease is not None]

    def recovering(self) -> bool:
        return self.clock() - self._started_at < self.recovery_s

    def take_shed(self) -> list[PendingRequest]:
        """Requests evicted from the queue to admit higher classes, since the last call."""
        shed, self._shed = self._shed, []
        return shed

    def shed_retry_after_ms(self, model_id: str) -> int:
        return self._admission.retry_after_ms(model_id)

    def drop_late(self) -> list[PendingRequest]:
        """Removes and returns waiting requests that cannot start before their deadline at
        the measured service rate (or whose deadline has passed)."""
        room = self._leases.room()
        return deadlines.take_late(self._queue, room, self._warm, self._rate, self.clock())

    def drop_cold(self) -> list[PendingRequest]:
        """Removes and returns requests waiting for a model no worker serves or is loading
        (scaled to zero, or its workers left) past `cold_start_timeout_s`, or so close to
        their deadline that they must be told now: they get UNAVAILABLE, not a late answer."""
        timeout_s, margin_s = self.cold_start_timeout_s, self.cold_start_margin_s
        return deadlines.take_cold(self._queue, self._warm, self.clock(), timeout_s, margin_s)

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
        workers, loading = self._leases.workers(), self._loading.models()
        commands = model_placement.plan(workers, starved, waiting, loading, self._catalog_bytes())
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
        running: Iterable[Lease] = (),
    ) -> list[Lease]:
        """Registers a worker (or a reconnecting one again) with the leases it is `running`:
        those the table lacks are adopted (the scheduler restarted), those it holds as
        started that the worker no longer runs are ended (LOST; returned)."""
        slots = []
        for entry, model_slots in models:
            if entry.model_id not in self.catalog:
                self._advertised[entry.model_id] = entry
            slots.append(model_slots)
        record = self._leases.upsert_worker(worker_id, address, gpu_id, slots, self.clock())
        record.loadable = dict(loadable or {})
        record.memory_budget = memory_budget
        running = list(running)
        gone = self._leases.started_on(worker_id) - {lease.lease_id for lease in running}
        for lease in running:
            self._leases.adopt(lease)
        ended = (self.end_lease(lease_id, Outcome.LOST) for lease_id in sorted(gone))
        return [lease for lease in ended if lease is not None]

    def heartbeat(
        self,
        worker_id: str,
        state: WorkerState,
        models: Iterable[ModelSlots] | None = None,
        running: Iterable[str] = (),
    ) -> bool:
        """Records a heartbeat: the worker's state, models and the leases it runs (they have
        started). False if the worker is unknown (removed as dead)."""
        if not self._leases.heartbeat(worker_id, self.clock(), state):
            return False
        self._leases.confirm(running)
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

    def remove_worker(self, worker_id: str) -> WorkerRemoval:
        """Forgets a worker; the leases it held end (LOST: their routers resume them)."""
        record = self._leases.worker(worker_id)
        held = sorted(record.leases) if record is not None else []
        ended = (self.end_lease(lease_id, Outcome.LOST) for lease_id in held)
        reclaimed = [lease for lease in ended if lease is not None]
        self._leases.remove_worker(worker_id)
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

    def queue_depths(self, tenant: str | None = None) -> dict[Priority, int]:
        return {p: self._queue.depth(p, tenant) for p in Priority}

    def queued(self) -> int:
        return len(self._queue)

    def workers(self) -> list[WorkerRecord]:
        return self._leases.workers()

    def leases(self) -> list[Lease]:
        return self._leases.leases()

    def active_leases(self, tenant: str | None = None) -> int:
        return self._leases.active_leases(tenant)

    def total_slots(self) -> int:
        return self._leases.total_slots()

    def service_rate(self, model_id: str) -> float | None:
        return self._rate.rate(model_id)

    # -- internals -------------------------------------------------------------------------
    def _available(self, model_id: str) -> bool:
        """Some live worker has the model, is loading it, or could load it; or an actuator
        starts workers for it; or workers may still be re-registering (recovering)."""
        if self._warm(model_id) or model_id in self.autoscaled or self.recovering():
            return True
        catalog_bytes = self._catalog_bytes()
        return any(
            model_placement.can_host(w, model_id, catalog_bytes) for w in self._leases.workers()
        )

    def _warm(self, model_id: str) -> bool:
        """Some live worker has the model (ready or loading) or was told to load it."""
        return self._leases.serves(model_id) or model_id in self._loading

    def _entries(self) -> dict[str, ModelCatalogEntry]:
        """Every known model: the catalog, and models workers advertised beyond it."""
        return {**self._advertised, **self.catalog}

    def _catalog_bytes(self) -> dict[str, int]:
        return {m: e.memory_bytes for m, e in self._entries().items() if e.memory_bytes}
