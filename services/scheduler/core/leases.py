"""The GPU lease table: workers, their model slots, and the leases held on them.

A lease holds one slot and `kv_tokens` (prompt + max_tokens) of one worker's KV-cache budget
for the model. Invariants: a lease is held on exactly one worker and counted in that worker's
`ModelSlots`; `release` frees a lease exactly once (a second release, or one after its worker
was removed, returns None); removing a worker reclaims all of its leases.

A lease is *unstarted* from its grant until its worker shows it running (a heartbeat lists it,
or it ends); one still unstarted at its start-by time was never presented (its router went
away) and is reclaimed (`expired`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from services.scheduler.core.types import (
    Lease,
    ModelSlots,
    PendingRequest,
    Priority,
    WorkerRecord,
    WorkerState,
)
from services.scheduler.core.worker_choice import LeastLoaded, PlacementPolicy

LATENCY_SMOOTHING = 0.2  # weight of the newest sample in a worker's latency average


def fits(room: dict[str, float]) -> Callable[[PendingRequest], bool]:
    """Whether a request fits some worker, given the lease table's `room()`."""
    return lambda request: request.kv_tokens <= room.get(request.model_id, -1)


class LeaseTable:
    def __init__(self, placement: PlacementPolicy | None = None, id_prefix: str = "lease") -> None:
        self._workers: dict[str, WorkerRecord] = {}
        self._leases: dict[str, Lease] = {}
        self._placement = placement or LeastLoaded()
        self._ids = itertools.count(1)
        self._id_prefix = id_prefix  # unique per scheduler start: ids never repeat
        self._by_class: dict[tuple[str, Priority], dict[str, Lease]] = {}  # (model, class)
        self._serving: dict[str, list[WorkerRecord]] | None = None  # model → its workers
        self._room: dict[str, float] | None = None  # cache of room(); None: all stale
        self._stale: set[str] = set()  # models whose room changed since it was cached
        self._unstarted: dict[str, float] = {}  # lease → start-by time, in grant order

    # -- workers ---------------------------------------------------------------------------
    def upsert_worker(
        self, worker_id: str, address: str, gpu_id: str, models: Iterable[ModelSlots], now: float
    ) -> WorkerRecord:
        """Registers a worker, or refreshes its models keeping the leases it holds."""
        self._room, self._serving = None, None
        record = self._workers.get(worker_id)
        slots = {m.model_id: m for m in models}
        if record is None:
            record = WorkerRecord(worker_id, address, gpu_id, slots, now)
            self._workers[worker_id] = record
            return record
        for model_id, fresh in slots.items():
            old = record.models.get(model_id)
            if old is not None:
                fresh.active, fresh.kv_reserved = old.active, old.kv_reserved
        record.models, record.address, record.gpu_id = slots, address, gpu_id
        record.last_heartbeat = now
        return record

    def heartbeat(self, worker_id: str, now: float, state: WorkerState) -> bool:
        """Marks a worker alive. False if it is not registered (it was removed)."""
        record = self._workers.get(worker_id)
        if record is None:
            return False
        record.last_heartbeat = now
        if record.state is not state or record.suspect:
            record.state, record.suspect, self._room = state, False, None
        return True

    def suspect(self, worker_id: str) -> None:
        """Takes no new leases on a worker that just failed a call, until its next
        heartbeat says how it is."""
        record = self._workers.get(worker_id)
        if record is not None and not record.suspect:
            record.suspect, self._room = True, None

    def remove_worker(self, worker_id: str) -> list[Lease]:
        """Forgets a worker and returns the leases it held, now reclaimed."""
        record = self._workers.pop(worker_id, None)
        if record is None:
            return []
        self._room, self._serving = None, None
        reclaimed = [self._leases.pop(lease_id) for lease_id in sorted(record.leases)]
        for lease in reclaimed:
            self._by_class[(lease.model_id, lease.priority)].pop(lease.lease_id, None)
            self._unstarted.pop(lease.lease_id, None)
        return reclaimed

    def silent_workers(self, now: float, timeout_s: float) -> list[str]:
        return [w.worker_id for w in self._workers.values() if now - w.last_heartbeat > timeout_s]

    def workers(self) -> list[WorkerRecord]:
        return list(self._workers.values())

    def worker(self, worker_id: str) -> WorkerRecord | None:
        return self._workers.get(worker_id)

    def observe_latency(self, worker_id: str, first_token_ms: float) -> None:
        record = self._workers.get(worker_id)
        if record is not None:
            old = record.latency_ms
            record.latency_ms = (
                first_token_ms if old is None else old + LATENCY_SMOOTHING * (first_token_ms - old)
            )

    # -- slots and leases ------------------------------------------------------------------
    def serves(self, model_id: str) -> bool:
        """True if some live worker has the model (ready or loading)."""
        return any(w.state is not WorkerState.UNHEALTHY for w in self._workers_of(model_id))

    def room(self) -> dict[str, float]:
        """Per model, the most KV tokens one more lease may reserve on any worker (absent
        when no worker has a free slot): a request fits iff its kv_tokens <= this. Cached
        until a lease, a worker or a model changes."""
        if self._room is None:
            self._room, self._stale = self._compute_room(), set()
        for model_id in self._stale:
            room = self._compute_room(model_id).get(model_id)
            if room is None:
                self._room.pop(model_id, None)
            else:
                self._room[model_id] = room
        self._stale.clear()
        return self._room

    def _compute_room(self, only: str | None = None) -> dict[str, float]:
        best: dict[str, float] = {}
        workers = self._workers.values() if only is None else self._workers_of(only)
        for worker in workers:
            if not worker.accepts_leases:
                continue
            models = worker.models.items() if only is None else [(only, worker.models[only])]
            for model_id, slots in models:
                room = slots.kv_room()
                if room >= 0 and room > best.get(model_id, -1):
                    best[model_id] = room
        return best

    def grant(
        self, request: PendingRequest, now: float, start_by: float | None = None
    ) -> Lease | None:
        """Leases a slot for the request on the worker the placement policy picks; the
        lease must be seen running by `start_by` (None: no such bound)."""
        candidates, serving = [], []
        for worker in self._workers_of(request.model_id):
            slots = worker.models[request.model_id]
            if worker.accepts_leases and slots.ready:
                serving.append(worker)
                if slots.fits(request.kv_tokens):
                    candidates.append(worker)
        if not candidates:
            return None
        elsewhere = [w for w in candidates if w.worker_id != request.avoid_worker]
        worker = self._placement.choose(elsewhere or candidates, request, serving)
        lease = Lease(
            lease_id=f"{self._id_prefix}-{next(self._ids)}",
            request_id=request.request_id,
            worker_id=worker.worker_id,
            worker_address=worker.address,
            gpu_id=worker.gpu_id,
            model_id=request.model_id,
            granted_at=now,
            priority=request.priority,
            tenant_id=request.tenant_id,
            kv_tokens=request.kv_tokens,
            tenant_weight=request.tenant_weight,
            charged=request.charge_estimate,
            resumed=request.resumed,
            max_tokens=request.max_tokens,
        )
        self._hold(lease, worker)
        if start_by is not None:
            self._unstarted[lease.lease_id] = start_by
        return lease

    def adopt(self, lease: Lease) -> bool:
        """Takes in a lease its worker reports running (a scheduler that restarted rebuilds
        its table so). False if the worker is unknown or the lease is held already."""
        worker = self._workers.get(lease.worker_id)
        if worker is None or lease.lease_id in self._leases:
            return False
        self._hold(lease, worker)
        return True

    def _hold(self, lease: Lease, worker: WorkerRecord) -> None:
        slots = worker.models.get(lease.model_id)
        if slots is not None:
            slots.active += 1
            slots.kv_reserved += lease.kv_tokens
        worker.leases.add(lease.lease_id)
        self._leases[lease.lease_id] = lease
        self._by_class.setdefault((lease.model_id, lease.priority), {})[lease.lease_id] = lease
        self._stale.add(lease.model_id)

    def confirm(self, lease_ids: Iterable[str]) -> None:
        """Leases a worker shows running have started."""
        if self._unstarted:
            for lease_id in lease_ids:
                self._unstarted.pop(lease_id, None)

    def expired(self, now: float) -> list[str]:
        """Unstarted leases past their start-by time (never presented to their worker)."""
        late = []
        for lease_id, start_by in self._unstarted.items():
            if start_by > now:
                break  # granted in order with one timeout: the rest start by later
            late.append(lease_id)
        return late

    def started_on(self, worker_id: str) -> set[str]:
        """Leases held on a worker that it has shown running."""
        record = self._workers.get(worker_id)
        if record is None:
            return set()
        return {lease_id for lease_id in record.leases if lease_id not in self._unstarted}

    def release(self, lease_id: str) -> Lease | None:
        """Frees a lease. Returns it the first time, None if it was already freed."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return None
        self._unstarted.pop(lease_id, None)
        self._by_class[(lease.model_id, lease.priority)].pop(lease_id, None)
        self._stale.add(lease.model_id)
        worker = self._workers.get(lease.worker_id)
        if worker is not None:
            worker.leases.discard(lease_id)
            slots = worker.models.get(lease.model_id)
            if slots is not None:
                slots.active = max(0, slots.active - 1)
                slots.kv_reserved = max(0, slots.kv_reserved - lease.kv_tokens)
        return lease

    def lease(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def leases(self) -> list[Lease]:
        return list(self._leases.values())

    def leases_of(self, model_id: str, priority: Priority) -> Iterable[Lease]:
        """Leases held now for one model by requests of one class."""
        return self._by_class.get((model_id, priority), {}).values()

    def _workers_of(self, model_id: str) -> list[WorkerRecord]:
        """Workers that have the model (any state), from an index rebuilt on changes."""
        if self._serving is None:
            self._serving = {}
            for worker in self._workers.values():
                for m in worker.models:
                    self._serving.setdefault(m, []).append(worker)
        return self._serving.get(model_id, [])

    def active_leases(self, tenant: str | None = None) -> int:
        """Leases held (by one tenant's requests, when given)."""
        if tenant is None:
            return len(self._leases)
        return sum(1 for lease in self._leases.values() if lease.tenant_id == tenant)

    def total_slots(self) -> int:
        return sum(
            m.max_slots
            for w in self._workers.values()
            if w.accepts_leases
            for m in w.models.values()
            if m.ready
        )
