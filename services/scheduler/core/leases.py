"""The GPU lease table: workers, their model slots, and the leases held on them.

Invariants: a lease is held on exactly one worker and counted in that worker's `ModelSlots`;
`release` frees a lease exactly once (a second release, or one after its worker was removed,
returns None); removing a worker reclaims all of its leases.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from services.scheduler.core.types import Lease, ModelSlots, WorkerRecord, WorkerState

# Picks one worker among candidates with a free slot for the model.
PlacementPolicy = Callable[[list[WorkerRecord], str], WorkerRecord]


def least_loaded(candidates: list[WorkerRecord], model_id: str) -> WorkerRecord:
    """The worker with the most free slots for the model; ties go to the fewest leases."""
    return max(candidates, key=lambda w: (w.models[model_id].free, -len(w.leases)))


class LeaseTable:
    def __init__(self, placement: PlacementPolicy = least_loaded) -> None:
        self._workers: dict[str, WorkerRecord] = {}
        self._leases: dict[str, Lease] = {}
        self._placement = placement
        self._ids = itertools.count(1)

    # -- workers ---------------------------------------------------------------------------
    def upsert_worker(
        self, worker_id: str, address: str, gpu_id: str, models: Iterable[ModelSlots], now: float
    ) -> WorkerRecord:
        """Registers a worker, or refreshes its models keeping the leases it holds."""
        record = self._workers.get(worker_id)
        slots = {m.model_id: m for m in models}
        if record is None:
            record = WorkerRecord(worker_id, address, gpu_id, slots, now)
            self._workers[worker_id] = record
            return record
        for model_id, fresh in slots.items():
            old = record.models.get(model_id)
            fresh.active = old.active if old else 0
        record.models, record.address, record.gpu_id = slots, address, gpu_id
        record.last_heartbeat = now
        return record

    def heartbeat(self, worker_id: str, now: float, state: WorkerState) -> bool:
        """Marks a worker alive. False if it is not registered (it was removed)."""
        record = self._workers.get(worker_id)
        if record is None:
            return False
        record.last_heartbeat = now
        record.state = state
        return True

    def remove_worker(self, worker_id: str) -> list[Lease]:
        """Forgets a worker and returns the leases it held, now reclaimed."""
        record = self._workers.pop(worker_id, None)
        if record is None:
            return []
        return [self._leases.pop(lease_id) for lease_id in sorted(record.leases)]

    def silent_workers(self, now: float, timeout_s: float) -> list[str]:
        return [w.worker_id for w in self._workers.values() if now - w.last_heartbeat > timeout_s]

    def workers(self) -> list[WorkerRecord]:
        return list(self._workers.values())

    def worker(self, worker_id: str) -> WorkerRecord | None:
        return self._workers.get(worker_id)

    # -- slots and leases ------------------------------------------------------------------
    def serves(self, model_id: str) -> bool:
        """True if some live worker has the model (ready or loading)."""
        return any(
            model_id in w.models and w.state is not WorkerState.UNHEALTHY
            for w in self._workers.values()
        )

    def has_free_slot(self, model_id: str) -> bool:
        return any(self._candidates(model_id))

    def grant(self, request_id: str, model_id: str, now: float) -> Lease | None:
        """Leases a slot for the request on the worker the placement policy picks."""
        candidates = list(self._candidates(model_id))
        if not candidates:
            return None
        worker = self._placement(candidates, model_id)
        lease = Lease(
            lease_id=f"lease-{next(self._ids)}",
            request_id=request_id,
            worker_id=worker.worker_id,
            worker_address=worker.address,
            gpu_id=worker.gpu_id,
            model_id=model_id,
            granted_at=now,
        )
        worker.models[model_id].active += 1
        worker.leases.add(lease.lease_id)
        self._leases[lease.lease_id] = lease
        return lease

    def release(self, lease_id: str) -> Lease | None:
        """Frees a lease. Returns it the first time, None if it was already freed."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return None
        worker = self._workers.get(lease.worker_id)
        if worker is not None:
            worker.leases.discard(lease_id)
            slots = worker.models.get(lease.model_id)
            if slots is not None:
                slots.active = max(0, slots.active - 1)
        return lease

    def active_leases(self) -> int:
        return len(self._leases)

    def total_slots(self) -> int:
        return sum(
            m.max_slots
            for w in self._workers.values()
            if w.accepts_leases
            for m in w.models.values()
            if m.ready
        )

    def _candidates(self, model_id: str) -> Iterable[WorkerRecord]:
        for worker in self._workers.values():
            slots = worker.models.get(model_id)
            if worker.accepts_leases and slots is not None and slots.free > 0:
                yield worker
