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
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from services.scheduler.core.liveness import Liveness, SilenceBounds
from services.scheduler.core.prefix_index import PrefixIndex
from services.scheduler.core.room_index import RoomIndex
from services.scheduler.core.types import (
    Lease,
    ModelSlots,
    PendingRequest,
    Priority,
    WorkerRecord,
    WorkerState,
)
from services.scheduler.core.worker_choice import (
    KvAware,
    LeastLoaded,
    PlacementPolicy,
    make_policy,
)

LATENCY_SMOOTHING = 0.2  # weight of the newest sample in a worker's latency average


class LeaseTable:
    def __init__(
        self,
        placement: PlacementPolicy | None = None,
        id_prefix: str = "lease",
        prefixes: PrefixIndex | None = None,
    ) -> None:
        self._workers: dict[str, WorkerRecord] = {}
        self.prefixes = prefixes or PrefixIndex()  # the blocks workers' prefix caches hold
        self._leases: dict[str, Lease] = {}
        self._placement = placement or LeastLoaded()
        self._ids = itertools.count(1)
        self._id_prefix = id_prefix  # unique per scheduler start: ids never repeat
        # class → model → its leases in grant order, those being preempted left out; a model
        # is absent from a class that holds none of its leases
        self._by_class: dict[Priority, dict[str, dict[str, Lease]]] = {p: {} for p in Priority}
        self._preempting: dict[str, int] = {}  # model → leases being preempted
        self._preempted: set[str] = set()
        self._serving: dict[str, dict[str, WorkerRecord]] = {}  # model → its workers
        self._index = RoomIndex(self._workers.get)
        self._rooms = MappingProxyType(self._index.rooms)  # a read-only live view
        self._liveness = Liveness(lambda w: self._workers[w].last_heartbeat)
        self._unstarted: dict[str, float] = {}  # lease → start-by time, in grant order

    @classmethod
    def placing_by(cls, placement: str, id_prefix: str = "lease") -> LeaseTable:
        """A table placing by the policy named `placement`, which may read its prefix index."""
        prefixes = PrefixIndex()
        return cls(make_policy(placement, None, prefixes), id_prefix, prefixes)

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
        else:
            for model_id, fresh in slots.items():
                old = record.models.get(model_id)
                if old is not None:
                    fresh.active, fresh.kv_reserved = old.active, old.kv_reserved
            gone = [m for m in record.models if m not in slots]
            for model_id in gone:
                self._serving.get(model_id, {}).pop(worker_id, None)
            self._index.forget(worker_id, iter(gone))
            self.prefixes.forget(worker_id, gone)
            record.models, record.address, record.gpu_id = slots, address, gpu_id
        for model_id in slots:
            self._serving.setdefault(model_id, {})[worker_id] = record
        self._beat(record, now)
        self._index.touch(record)
        return record

    def heartbeat(self, worker_id: str, now: float, state: WorkerState) -> bool | None:
        """Marks a worker alive. True if its state changed (or it was suspect), False if
        not, None if it is not registered (it was removed)."""
        record = self._workers.get(worker_id)
        if record is None:
            return None
        self._beat(record, now)
        if record.state is not state or record.suspect:
            record.state, record.suspect = state, False
            self._index.touch(record)
            return True
        return False

    def refresh_models(self, worker_id: str, models: Iterable[ModelSlots], now: float) -> bool:
        """Takes a registered worker's models as its heartbeat reports them. True if any
        changed (then it is indexed again); the leases it holds are kept either way."""
        record = self._workers[worker_id]
        models = list(models)
        if len(models) == len(record.models) and all(
            _same_slots(record.models.get(m.model_id), m) for m in models
        ):
            return False
        self.upsert_worker(worker_id, record.address, record.gpu_id, models, now)
        return True

    def _beat(self, record: WorkerRecord, now: float) -> None:
        record.last_heartbeat = now
        self._liveness.heard(record.worker_id)

    def session_closed(self, worker_id: str, now: float) -> None:
        """Its session closed: no new lease, and removed soon unless it registers again."""
        self.suspect(worker_id)
        self._liveness.closed(worker_id, now)

    def suspect(self, worker_id: str) -> None:
        """Takes no new leases on a worker that just failed a call, until its next
        heartbeat says how it is."""
        record = self._workers.get(worker_id)
        if record is not None and not record.suspect:
            record.suspect = True
            self._index.touch(record)

    def remove_worker(self, worker_id: str) -> list[Lease]:
        """Forgets a worker and returns the leases it held, now reclaimed."""
        record = self._workers.pop(worker_id, None)
        if record is None:
            return []
        for model_id in record.models:
            self._serving.get(model_id, {}).pop(worker_id, None)
        self._index.forget(worker_id, iter(record.models))
        self.prefixes.forget(worker_id)
        self._liveness.forget(worker_id)
        reclaimed = [self._leases.pop(lease_id) for lease_id in sorted(record.leases)]
        for lease in reclaimed:
            self._unlist(lease)
            self._unstarted.pop(lease.lease_id, None)
            if lease.lease_id in self._preempted:
                self._preempted.discard(lease.lease_id)
                self._preempting[lease.model_id] -= 1
        return reclaimed

    def silent_workers(self, now: float, bounds: SilenceBounds) -> list[str]:
        """Workers to remove (`Liveness.silent`); those silent a shorter while are made
        suspect (no new lease; their leases kept: a host cut off for a moment comes back
        with them)."""
        suspects, dead = self._liveness.silent(now, bounds)
        for worker_id in suspects:
            self.suspect(worker_id)
        return dead

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

    def room(self) -> Mapping[str, float]:
        """Per model, the most KV tokens one more lease may reserve on any worker (absent
        when no worker has a free slot): a request fits iff its kv_tokens <= this. Kept
        current by the index."""
        return self._rooms

    def grant(
        self, request: PendingRequest, now: float, start_by: float | None = None
    ) -> Lease | None:
        """Leases a slot for the request on the worker the placement policy picks; the
        lease must be seen running by `start_by` (None: no such bound)."""
        worker = self._choose(request)
        if worker is None:
            return None
        lease = _lease(f"{self._id_prefix}-{next(self._ids)}", request, worker, now)
        self._hold(lease, worker)
        if start_by is not None:
            self._unstarted[lease.lease_id] = start_by
        return lease

    def _choose(self, request: PendingRequest) -> WorkerRecord | None:
        """The least loaded worker from the index, O(log W) (kv_aware's too for a request
        without blocks); kv_aware's among those caching the prompt's first block and that one;
        else (other policies, picks that do not suit) every worker of the model, those the
        request avoids or its router cannot reach last."""
        policy = type(self._placement)
        if policy is LeastLoaded or policy is KvAware:
            worker = self._index.least_loaded(
                request.model_id, request.kv_tokens, request.avoid_worker
            )
            worker = None if worker and worker.worker_id in request.unreachable else worker
            if not request.prefix_blocks or policy is LeastLoaded:
                if worker is not None:
                    return worker
            elif (shortlist := self._holders(request, worker)) is not None:
                return self._placement.choose(shortlist, request, [])
        candidates, serving = [], []
        for worker in self._workers_of(request.model_id):
            slots = worker.models[request.model_id]
            if worker.accepts_leases and slots.ready:
                serving.append(worker)
                if slots.fits(request.kv_tokens):
                    candidates.append(worker)
        if not candidates:
            return None
        shunned = {request.avoid_worker, *request.unreachable}
        elsewhere = [w for w in candidates if w.worker_id not in shunned]
        return self._placement.choose(elsewhere or candidates, request, serving)

    def _holders(
        self, request: PendingRequest, least_loaded: WorkerRecord | None
    ) -> list[WorkerRecord] | None:
        """kv_aware's candidates: the workers with room that cache the prompt's first block
        (the others would prefill it all: the least loaded stands for them), and the least
        loaded; None when that leaves none."""
        model_id, kv_tokens = request.model_id, request.kv_tokens
        found = [least_loaded] if least_loaded is not None else []
        for worker_id in self.prefixes.holders(model_id, request.prefix_blocks[0]):
            worker = self._workers.get(worker_id)
            shunned = worker_id == request.avoid_worker or worker_id in request.unreachable
            if worker is None or worker is least_loaded or shunned:
                continue
            slots = worker.models.get(model_id)
            if worker.accepts_leases and slots is not None and slots.fits(kv_tokens):
                found.append(worker)
        return found or None

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
        by_model = self._by_class[lease.priority]
        held = by_model.get(lease.model_id)
        if held is None:
            held = by_model[lease.model_id] = {}
        held[lease.lease_id] = lease
        self._index.touch(worker)

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
        self._unlist(lease)
        if lease_id in self._preempted:
            self._preempted.discard(lease_id)
            self._preempting[lease.model_id] -= 1
        worker = self._workers.get(lease.worker_id)
        if worker is not None:
            worker.leases.discard(lease_id)
            slots = worker.models.get(lease.model_id)
            if slots is not None:
                slots.active = slots.active - 1 if slots.active > 0 else 0
                reserved = slots.kv_reserved - lease.kv_tokens
                slots.kv_reserved = reserved if reserved > 0 else 0
            self._index.touch(worker)
        return lease

    def lease(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def leases(self) -> list[Lease]:
        return list(self._leases.values())

    def mark_preempted(self, lease_id: str) -> None:
        """A lease chosen to be preempted: no longer a candidate, counted as being freed."""
        lease = self._leases.get(lease_id)
        if lease is not None and lease_id not in self._preempted:
            self._preempted.add(lease_id)
            self._unlist(lease)
            self._preempting[lease.model_id] = self._preempting.get(lease.model_id, 0) + 1

    def preempting(self, model_id: str) -> int:
        """Leases of the model chosen to be preempted and not released yet."""
        return self._preempting.get(model_id, 0)

    def youngest_first(self, model_id: str, priority: Priority) -> Iterator[Lease]:
        """Leases held now for one model by requests of one class, the latest granted
        first (they are kept in grant order), except those being preempted."""
        return reversed(self._by_class[priority].get(model_id, {}).values())

    def models_held(self, priority: Priority) -> Iterable[str]:
        """Models that requests of the class hold leases of (not being preempted)."""
        return self._by_class[priority].keys()

    def _unlist(self, lease: Lease) -> None:
        by_model = self._by_class[lease.priority]
        held = by_model.get(lease.model_id)
        if held is not None and held.pop(lease.lease_id, None) is not None and not held:
            del by_model[lease.model_id]

    def _workers_of(self, model_id: str) -> Iterable[WorkerRecord]:
        """Workers that have the model (any state)."""
        return self._serving.get(model_id, {}).values()

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


def _lease(lease_id: str, request: PendingRequest, worker: WorkerRecord, now: float) -> Lease:
    return Lease(  # positional, in Lease's order: one is built per decision
        lease_id,
        request.request_id,
        worker.worker_id,
        worker.address,
        worker.gpu_id,
        request.model_id,
        now,
        request.priority,
        request.tenant_id,
        request.kv_tokens,
        request.tenant_weight,
        request.charge_estimate,
        request.resumed,
        request.max_tokens,
    )


def _same_slots(known: ModelSlots | None, reported: ModelSlots) -> bool:
    """Whether a model's slots as reported differ in nothing but the leases held."""
    return known is not None and (
        known.max_slots,
        known.ready,
        known.kv_capacity,
        known.memory_bytes,
    ) == (reported.max_slots, reported.ready, reported.kv_capacity, reported.memory_bytes)
