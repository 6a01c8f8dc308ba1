"""SchedulerCore: the queue, the lease table and the model catalog behind one pure API.

Every method is synchronous and takes time from the injected clock. The async coordinator
calls it from one event loop and never awaits in the middle of a call, so the state changes
one call at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.common.errors import NotFound, ResourceExhausted, Unavailable
from services.scheduler.core.leases import LeaseTable, PlacementPolicy, least_loaded
from services.scheduler.core.queue import QueueFull, RequestQueue
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
    full_retry_after_ms: int = 1000
    starvation_bound_s: float | None = None  # aging: longest a request waits behind younger
    placement: PlacementPolicy = least_loaded
    _queue: RequestQueue = field(init=False)
    _leases: LeaseTable = field(init=False)
    _advertised: dict[str, ModelCatalogEntry] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._queue = RequestQueue(self.queue_capacity)
        self._leases = LeaseTable(self.placement)

    # -- requests --------------------------------------------------------------------------
    def model(self, model_id: str) -> ModelCatalogEntry:
        """The catalog entry of a model. Raises NotFound for a model nobody knows."""
        entry = self.catalog.get(model_id) or self._advertised.get(model_id)
        if entry is None:
            raise NotFound(f"unknown model {model_id!r}")
        return entry

    def enqueue(
        self, request_id: str, model_id: str, priority: Priority, tenant_id: str
    ) -> PendingRequest:
        """Queues a request. Raises NotFound, Unavailable (no worker has the model) or
        ResourceExhausted (queue full)."""
        self.model(model_id)
        if not self._leases.serves(model_id):
            raise Unavailable(f"no worker is serving model {model_id!r} now")
        pending = PendingRequest(request_id, model_id, priority, tenant_id, self.clock())
        try:
            return self._queue.push(pending)
        except QueueFull:
            raise ResourceExhausted(
                f"queue full ({self.queue_capacity} requests waiting)", self.full_retry_after_ms
            ) from None

    def cancel(self, request_id: str) -> bool:
        """Takes a waiting request out of the queue. False if it was not waiting."""
        return self._queue.remove(request_id) is not None

    def dispatch(self) -> list[tuple[PendingRequest, Lease]]:
        """Grants leases to waiting requests, highest priority first, while slots are free."""
        granted = []
        while True:
            request = self._queue.pop_next(
                self._leases.has_free_slot, self.clock(), self.starvation_bound_s
            )
            if request is None:
                return granted
            lease = self._leases.grant(request.request_id, request.model_id, self.clock())
            assert lease is not None  # pop_next only returns requests with a free slot
            granted.append((request, lease))

    def release(self, lease_id: str) -> Lease | None:
        """Frees a lease exactly once; None if it was already freed or reclaimed."""
        return self._leases.release(lease_id)

    # -- workers ---------------------------------------------------------------------------
    def register_worker(
        self,
        worker_id: str,
        address: str,
        gpu_id: str,
        models: Iterable[tuple[ModelCatalogEntry, ModelSlots]],
    ) -> None:
        slots = []
        for entry, model_slots in models:
            if entry.model_id not in self.catalog:
                self._advertised[entry.model_id] = entry
            slots.append(model_slots)
        self._leases.upsert_worker(worker_id, address, gpu_id, slots, self.clock())

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

    def remove_worker(self, worker_id: str) -> WorkerRemoval:
        reclaimed = self._leases.remove_worker(worker_id)
        return WorkerRemoval(worker_id, reclaimed, self.take_orphans())

    def take_orphans(self) -> list[PendingRequest]:
        """Removes and returns queued requests whose model no worker serves any more."""
        orphaned = []
        for model_id in self._queue.models():
            if not self._leases.serves(model_id):
                for request in list(self._queue.waiting_for(model_id)):
                    self._queue.remove(request.request_id)
                    orphaned.append(request)
        return orphaned

    def expire_silent_workers(self) -> list[WorkerRemoval]:
        """Removes workers whose last heartbeat is older than the timeout."""
        silent = self._leases.silent_workers(self.clock(), self.heartbeat_timeout_s)
        return [self.remove_worker(worker_id) for worker_id in silent]

    # -- views -----------------------------------------------------------------------------
    def models(self) -> list[ModelView]:
        entries = {**self._advertised, **self.catalog}
        ready = {model_id: 0 for model_id in entries}
        for worker in self._leases.workers():
            for slots in worker.models.values():
                if worker.accepts_leases and slots.ready and slots.model_id in ready:
                    ready[slots.model_id] += 1
        return [ModelView(entries[m], ready[m]) for m in sorted(entries)]

    def queue_depths(self) -> dict[Priority, int]:
        return {p: self._queue.depth(p) for p in Priority}

    def workers(self) -> list[WorkerRecord]:
        return self._leases.workers()

    def active_leases(self) -> int:
        return self._leases.active_leases()

    def total_slots(self) -> int:
        return self._leases.total_slots()
