"""SchedulerCore: the queue, the lease table and the model catalog behind one pure API.

Every method is synchronous and takes time from the injected clock. The async coordinator
calls it from one event loop and never awaits in the middle of a call, so the state changes
one call at a time. Each mutating call returns one `Changes` (core.changes): the follow-ups
a change calls for (shedding, orphans, serving the queue, the preemption check, placing
models) have already run inside it, and the caller applies the result in one place.

After a start the core is *recovering* for `recovery_s`: workers re-register with their leases
(the table is rebuilt from them), routers resubmit their requests (by arrival time); nothing
is granted, and a model without a worker yet is not refused, until the window ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from services.common.errors import NotFound, Unavailable
from services.scheduler.core import deadlines, preemption
from services.scheduler.core.admission import AdmissionControl
from services.scheduler.core.autoscaling import Autoscaler, ScalingDecision
from services.scheduler.core.changes import Changes, EndedLease, FailReason
from services.scheduler.core.leases import LeaseTable
from services.scheduler.core.ledger import Ledger
from services.scheduler.core.load_signals import model_loads, model_views
from services.scheduler.core.model_placement import ModelPlacer
from services.scheduler.core.prefix_index import CacheReport
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.rates import EventRates
from services.scheduler.core.settings import CoreSettings
from services.scheduler.core.types import (
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    ModelView,
    Outcome,
    Priority,
    Resubmission,
    RevokeLease,
    Ticket,
    Usage,
    WorkerRecord,
    WorkerState,
)


class SchedulerCore:
    def __init__(
        self,
        catalog: dict[str, ModelCatalogEntry],
        clock: Callable[[], float],
        settings: CoreSettings,
        lease_prefix: str = "lease",  # lease ids start with it: unique per scheduler start
    ) -> None:
        self.catalog, self.clock, self.settings = catalog, clock, settings
        admission, dispatch = settings.admission, settings.dispatch
        self._queue = RequestQueue(admission.queue_capacity)
        self._leases = LeaseTable.placing_by(dispatch.placement, lease_prefix)
        self._ledger = Ledger(self._queue.fair)
        self._started_at = clock()
        self._recovered = False  # the recovery window after a start is over
        self._rate = EventRates(admission.rate_window_s, clock)  # completions
        self._arrivals = EventRates(settings.autoscaling.arrival_window_s, clock)
        self._admission = AdmissionControl(
            admission, self._queue, self._leases, self._rate, self._available, self._warm
        )
        self._autoscaler = Autoscaler(settings.autoscaling, clock)
        self._placer = ModelPlacer(dispatch.load_timeout_s, self._leases.worker)
        self._advertised: dict[str, ModelCatalogEntry] = {}
        # models an actuator starts workers for: with no worker they are queued, not refused
        self._autoscaled = frozenset(
            m
            for m in catalog
            if settings.autoscaling.enabled and settings.autoscaling.bounds_of(m).max_workers
        )
        self.decisions: dict[str, ScalingDecision] = {}  # settled ones: what actuators see

    # -- requests --------------------------------------------------------------------------
    def model(self, model_id: str) -> ModelCatalogEntry:
        """The catalog entry of a model. Raises NotFound for a model nobody knows."""
        entry = self.catalog.get(model_id) or self._advertised.get(model_id)
        if entry is None:
            raise NotFound(f"unknown model {model_id!r}")
        return entry

    def submit(self, ticket: Ticket, waited_s: float = 0.0) -> Changes:
        """Admits a request to the queue (`Changes.admitted`), possibly degraded (model or
        max_tokens changed), and serves the queue. Raises NotFound, Unavailable (no worker has
        or can load the model), ResourceExhausted (shed) or DeadlineExceeded. A lower class
        evicted to make room is among the failures. `waited_s`: since a router first admitted
        it (resubmitted after a scheduler restart): it takes its place in arrival order."""
        entry = self.model(ticket.model_id)
        now = self.clock()
        self._arrivals.record(ticket.model_id)  # offered load, shed or not, for the autoscaler
        max_tokens = ticket.max_tokens or entry.default_output_tokens
        admitted = self._admission.admit(
            ticket.model_id,
            ticket.priority,
            max_tokens,
            ticket.deadline,
            ticket.allow_fallback,
            now,
            ticket.tenant_id,
        )
        changes = Changes()
        if admitted.evicted is not None:
            retry_ms = self.retry_after_ms(admitted.evicted.model_id)
            changes.fail([admitted.evicted], FailReason.EVICTED, retry_ms)
        enqueued_at = now - max(0.0, waited_s)
        pending = ticket.pending(enqueued_at, admitted.model_id, admitted.max_tokens)
        changes.admitted = self._queue.push(pending)
        return self._settle(changes, place=True)

    def resubmit(self, ticket: Ticket, again: Resubmission) -> Changes:
        """A router resubmits a request whose lease (`again.previous_lease_id`) ended early
        as it saw it: ends that lease if still held, charging its tokens once (a failed worker
        takes no lease until its next heartbeat); queues the request again by arrival time,
        unshed, on its admitted model. Raises NotFound, or Unavailable (no worker serves it)."""
        entry = self.model(ticket.model_id)
        failed = again.previous_outcome is Outcome.FAILED
        max_tokens = ticket.max_tokens or entry.default_output_tokens
        pending = replace(
            ticket.pending(self.clock() - again.waited_s, ticket.model_id, max_tokens),
            avoid_worker=again.previous_worker_id if failed else "",
            resumed=True,
            resumed_tokens=again.generated_tokens,
        )
        changes = Changes()
        if failed:  # whether or not its worker reported the lease's end first
            self._leases.suspect(again.previous_worker_id)
        lease = self._leases.lease(again.previous_lease_id)
        if lease is None:
            changes.reconciled += self._ledger.settle_resubmitted(pending, again)
        else:
            usage = Usage(completion_tokens=again.previous_lease_tokens)
            self._end(lease.lease_id, again.previous_outcome, usage, changes)
        if not self._available(pending.model_id):
            raise Unavailable(f"no worker is serving model {pending.model_id!r} now")
        changes.admitted = self._queue.push(pending, force=True)
        return self._settle(changes, place=True)

    def withdraw(self, request_id: str, granted: Lease | None = None) -> Changes:
        """Its caller gave up: the request leaves the queue, and a lease granted to it just
        then (nobody will present it) ends CANCELLED."""
        self._queue.remove(request_id)
        return Changes() if granted is None else self.end_lease(granted.lease_id, Outcome.CANCELLED)

    def end_lease(self, lease_id: str, outcome: Outcome, usage: Usage | None = None) -> Changes:
        """Ends a lease exactly once, whoever noticed first (a second end changes nothing).
        `usage`: what its worker reported (None: nobody did). Frees its slot, corrects the
        fairness charge (core.ledger), feeds the rate and latency estimates, serves the
        queue."""
        changes = Changes()
        if self._end(lease_id, outcome, usage, changes) is None:
            return changes
        return self._settle(changes)

    def recovering(self) -> bool:
        if not self._recovered:
            self._recovered = self.clock() - self._started_at >= self.settings.dispatch.recovery_s
        return not self._recovered

    def retry_after_ms(self, model_id: str) -> int:
        """When a request shed now should try again: the queue ahead drained at the rate."""
        return self._admission.retry_after_ms(model_id)

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
        caches: Iterable[CacheReport] = (),
        ended: Iterable[tuple[str, Outcome, Usage]] = (),
    ) -> Changes:
        """Registers a worker (or a reconnecting one again) with the leases it is `running`:
        those the table lacks are adopted (the scheduler restarted) unless they ended here,
        those it holds as started that the worker no longer runs end LOST. The leases it says
        `ended` lately end first, as it says (or are settled late: `_end`)."""
        slots = []
        for entry, model_slots in models:
            if entry.model_id not in self.catalog:
                self._advertised[entry.model_id] = entry
            slots.append(model_slots)
        record = self._leases.upsert_worker(worker_id, address, gpu_id, slots, self.clock())
        record.loadable, record.memory_budget = dict(loadable or {}), memory_budget
        self._leases.prefixes.forget(worker_id)  # a registration tells all it caches
        self._leases.prefixes.apply_all(worker_id, caches)
        self._placer.worker_changed(record)
        changes, running = Changes(), list(running)
        for lease_id, outcome, usage in ended:  # reports a broken session may have lost
            self._end(lease_id, outcome, usage, changes)
        gone = self._leases.started_on(worker_id) - {lease.lease_id for lease in running}
        for lease in running:  # one that ended here while its host was cut off is stopped
            if self._ledger.ended(lease.lease_id):  # (its request went on elsewhere)
                changes.commands.append(RevokeLease(worker_id, lease.lease_id, Outcome.LOST.value))
            elif self._leases.adopt(lease):
                changes.adopted.append(lease)
        for lease_id in sorted(gone):
            self._end(lease_id, Outcome.LOST, None, changes)
        return self._settle(changes, place=True)

    def adopt_lease(self, lease: Lease) -> Changes:
        """A worker runs a lease this scheduler's predecessor granted (presented after the
        worker registered again): held from now on, unless held already or the worker is gone."""
        changes = Changes()
        changes.adopted = [lease] if self._leases.adopt(lease) else []
        return changes

    def heartbeat(
        self,
        worker_id: str,
        state: WorkerState,
        models: Iterable[ModelSlots] | None = None,
        running: Iterable[str] = (),
        caches: Iterable[CacheReport] = (),
    ) -> Changes:
        """Records a heartbeat: the worker's state, models, the leases it runs (started) and
        its prefix caches' changes. A worker unknown here (removed as dead): `removed_workers`."""
        changes = Changes()
        changed = self._leases.heartbeat(worker_id, self.clock(), state)
        if changed is None:
            changes.removed_workers.append(worker_id)
            return changes
        self._leases.confirm(running)
        self._leases.prefixes.apply_all(worker_id, caches)
        if models is not None:
            changed = self._leases.refresh_models(worker_id, models, self.clock()) or changed
        if not changed:  # the usual heartbeat: nothing a decision reads moved
            return changes
        self._take_orphans(changes)
        return self._settle(changes)

    def remove_worker(self, worker_id: str) -> Changes:
        """Forgets a worker (it left); the leases it held end LOST (their routers resume
        them), and requests no remaining worker can serve fail."""
        changes = Changes()
        self._remove(worker_id, changes)
        return self._settle(changes)

    def session_closed(self, worker_id: str) -> Changes:
        """A drained worker that runs nothing has left. Any other may be cut off a moment (a
        blip): no new lease, its leases kept, until it registers again (they are reconciled,
        each ends once) or is declared dead (`CoreSettings.silence_bounds`)."""
        record = self._leases.worker(worker_id)
        if record is not None and record.state is WorkerState.DRAINING and not record.leases:
            return self.remove_worker(worker_id)
        self._leases.session_closed(worker_id, self.clock())  # (nothing for one it does not know)
        return Changes()

    # -- periodic work ---------------------------------------------------------------------
    def tick(self) -> Changes:
        """Suspects, then removes, silent workers; ends leases never presented in time; drops
        requests that cannot meet their deadline; places models; serves the queue; scales."""
        changes, now = Changes(), self.clock()
        for worker_id in self._leases.silent_workers(now, self.settings.silence_bounds):
            self._remove(worker_id, changes)
            changes.removed_workers.append(worker_id)
        for lease_id in self._leases.expired(now):
            self._end(lease_id, Outcome.EXPIRED, None, changes)
        scaling = self.settings.autoscaling
        cold = deadlines.take_cold(
            self._queue,
            self._warm,
            now,
            scaling.cold_start_timeout_s,
            self.settings.cold_start_margin_s,
        )
        changes.fail(cold, FailReason.COLD_EXPIRED)
        room, hint = self._leases.room(), self.retry_after_ms  # a late request: its model's hint
        for late in deadlines.take_late(self._queue, room, self._warm, self._rate, now):
            changes.fail([late], FailReason.DROPPED_LATE, hint(late.model_id))
        self._settle(changes, place=True)
        changes.scaling = self._autoscale()
        return changes

    # -- views -----------------------------------------------------------------------------
    def models(self) -> list[ModelView]:
        return model_views(self._entries(), self._leases.workers())

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

    def cached_blocks(self, worker_id: str, model_id: str) -> int:
        """Prompt blocks the worker's prefix cache holds for the model, as last reported."""
        return self._leases.prefixes.blocks_held(worker_id, model_id)

    # -- follow-ups ------------------------------------------------------------------------
    def _settle(self, changes: Changes, place: bool = False) -> Changes:
        """Runs what every change calls for: model placement (when demand may have changed),
        serving the queue while requests fit (not while recovering), the preemption check."""
        if place:
            changes.commands += self._placer.plan(
                self._queue.models(), self._leases.room(), self._catalog_bytes(), self.clock()
            )
        dispatch = self.settings.dispatch
        if not self.recovering():
            now = self.clock()
            start_by = now + self.settings.lease_expiry_s
            bound = dispatch.starvation_bound_s or None  # 0: strict priority
            queue, leases, room = self._queue, self._leases, self._leases.room()
            while request := queue.pop_next(room, now, bound):
                lease = leases.grant(request, now, start_by)
                assert lease is not None  # pop_next only returns requests that fit
                changes.granted.append((request, lease))
        if dispatch.preemption:
            for victim in preemption.choose_victims(self._queue, self._leases):
                changes.commands.append(RevokeLease(victim.worker_id, victim.lease_id))
        return changes

    def _end(
        self, lease_id: str, outcome: Outcome, usage: Usage | None, changes: Changes
    ) -> Lease | None:
        """Ends one lease, once; None if it had ended already. `usage`: what its worker
        reported, or what a router says it streamed under it; None: nobody said."""
        lease = self._leases.release(lease_id)
        if lease is None:  # ended here unreported? its worker's late report settles it
            changes.reconciled += self._ledger.settle_late(lease_id, outcome, usage)
            return None
        if outcome is Outcome.COMPLETED:
            self._rate.record(lease.model_id, self.clock() - lease.granted_at)  # its duration
        if usage is not None and usage.time_to_first_token_ms > 0:
            self._leases.observe_latency(lease.worker_id, usage.time_to_first_token_ms)
        self._ledger.settle(lease, usage)
        changes.ended.append(EndedLease(lease, outcome, usage))
        return lease

    def _remove(self, worker_id: str, changes: Changes) -> None:
        record = self._leases.worker(worker_id)
        for lease_id in sorted(record.leases) if record is not None else []:
            self._end(lease_id, Outcome.LOST, None, changes)
        self._leases.remove_worker(worker_id)
        self._placer.worker_left(worker_id)
        self._take_orphans(changes)

    def _take_orphans(self, changes: Changes) -> None:
        """Fails queued requests whose model no worker serves or can load."""
        orphans = [
            r
            for m in self._queue.models()
            if not self._available(m)
            for r in self._queue.take_waiting(m)
        ]
        changes.fail(orphans, FailReason.ORPHANED)

    def _autoscale(self) -> list[ScalingDecision]:
        """Desired worker counts per catalog model (see core.autoscaling); the settled ones
        are kept in `decisions`, what status views, metrics and actuators see."""
        entries, workers, queue = self._entries().values(), self._leases.workers(), self._queue
        loads = model_loads(
            entries, workers, queue.backlog(), self.clock(), self._arrivals, self._rate
        )
        decided = [self._autoscaler.decide(load) for load in loads]
        self.decisions = {d.model_id: d for d in decided if d.settled}
        return decided

    # -- internals -------------------------------------------------------------------------
    def _available(self, model_id: str) -> bool:
        """Some live worker has the model, is loading it, or could load it; or an actuator
        starts workers for it; or workers may still be re-registering (recovering)."""
        if self._warm(model_id) or model_id in self._autoscaled or self.recovering():
            return True
        return self._placer.can_host(model_id, self._catalog_bytes())

    def _warm(self, model_id: str) -> bool:
        """Some live worker has the model (ready or loading) or was told to load it."""
        return self._leases.serves(model_id) or model_id in self._placer.loading

    def _entries(self) -> dict[str, ModelCatalogEntry]:
        """Every known model: the catalog, and models workers advertised beyond it."""
        return {**self._advertised, **self.catalog}

    def _catalog_bytes(self) -> dict[str, int]:
        return {m: e.memory_bytes for m, e in self._entries().items() if e.memory_bytes}
