"""The scheduler's Prometheus metrics.

Gauges that mirror the scheduler's state are refreshed by `refresh` when the registry is
collected (a scrape), run on the event loop (`RefreshedRegistry`), so the metrics HTTP thread
never reads live scheduler state and nobody scraping costs nothing.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS, RefreshedRegistry
from services.scheduler.core.fairness import ServedTokens
from services.scheduler.core.types import Lease, Outcome, Priority, Usage, WorkerState

# How a lease ended early, as `inference_scheduler_leases_lost_total` names it.
_LOST_REASONS = {
    Outcome.LOST: "worker_lost",
    Outcome.FAILED: "worker_lost",
    Outcome.PREEMPTED: "preempted",
    Outcome.EXPIRED: "expired",
}


class SchedulerMetrics:
    def __init__(self, served: ServedTokens) -> None:
        self.registry = r = RefreshedRegistry()
        self.served = served
        self._per_worker: dict[str, tuple[Gauge, Gauge]] = {}  # its leases and slots children
        self._per_gpu: dict[str, tuple[str, list[Gauge]]] = {}  # its GPU and device children
        self._declare_request_metrics(r)
        self._declare_lease_metrics(r)
        self._declare_fleet_metrics(r)
        self._declare_model_metrics(r)

    def _declare_request_metrics(self, r: RefreshedRegistry) -> None:
        """Queues and sheds: what happens to requests before a lease."""
        self.queue_depth = Gauge(
            "inference_scheduler_queue_depth",
            "Requests waiting for a lease",
            ["priority"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "inference_scheduler_queue_wait_seconds",
            "Time from arrival to lease",
            ["priority"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "inference_scheduler_shed",
            "Requests refused at admission, evicted, or ended by their deadline in the queue",
            ["tenant", "priority", "reason"],
            registry=r,
        )

    def _declare_lease_metrics(self, r: RefreshedRegistry) -> None:
        """Leases: how they start and end, and the tokens they served."""
        self.lease_lost = Counter(
            "inference_scheduler_leases_lost",
            "Leases that ended before their stream: requests resubmitted to resume elsewhere",
            ["reason"],
            registry=r,
        )
        self.lease_ends = Counter(
            "inference_scheduler_lease_ends",
            "Leases ended, by how they ended",
            ["outcome"],
            registry=r,
        )
        self.lease_reconciliations = Counter(
            "inference_scheduler_leases_reconciled",
            "Leases ended here unreported (declared lost while their worker was cut off) whose "
            "end was told later, by their worker or by their router resuming them, by the "
            "outcome told: their tokens are charged then",
            ["outcome"],
            registry=r,
        )
        self.lease_starts = Counter(
            "inference_scheduler_lease_starts",
            "Leases this scheduler started holding: granted, or adopted from a worker that ran "
            "one its predecessor granted (at rest, the sum equals lease ends)",
            ["how"],
            registry=r,
        )
        self._start_counts: dict[str, Any] = {}
        self.scheduler_actions = Counter(
            "inference_scheduler_actions",
            "Preemptions, deadline drops, evictions and placement commands",
            ["action"],
            registry=r,
        )
        self.served_tokens = Counter(
            "inference_scheduler_served_tokens",
            "Tokens generated for each tenant",
            ["tenant"],
            registry=r,
        )

    def _declare_fleet_metrics(self, r: RefreshedRegistry) -> None:
        """Workers and their devices, refreshed on scrape."""
        self.leases = Gauge(
            "inference_scheduler_leases", "Leases held per worker", ["worker"], registry=r
        )
        self.slots = Gauge(
            "inference_scheduler_slots", "Slots of ready models per worker", ["worker"], registry=r
        )
        self.workers = Gauge(
            "inference_scheduler_workers", "Registered workers by state", ["state"], registry=r
        )
        self.gpu_utilization = Gauge(
            "inference_fleet_gpu_utilization_ratio",
            "Device compute utilization, 0 to 1",
            ["worker", "gpu_id"],
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "inference_fleet_gpu_memory_used_bytes",
            "Device memory in use",
            ["worker", "gpu_id"],
            registry=r,
        )
        self.gpu_memory_total = Gauge(
            "inference_fleet_gpu_memory_total_bytes",
            "Device memory",
            ["worker", "gpu_id"],
            registry=r,
        )

    def _declare_model_metrics(self, r: RefreshedRegistry) -> None:
        """Models and tenants: desired workers, slot use, fairness."""
        self.desired_workers = Gauge(
            "inference_scheduler_desired_workers",
            "Workers each model should have, by the autoscaling policy (drives KEDA)",
            ["model"],
            registry=r,
        )
        self.model_workers = Gauge(
            "inference_scheduler_model_workers",
            "Workers serving or loading each model, draining ones excluded",
            ["model"],
            registry=r,
        )
        self.model_utilization = Gauge(
            "inference_scheduler_model_slot_utilization_ratio",
            "Leases held ÷ slots, per model",
            ["model"],
            registry=r,
        )
        self.fairness = Gauge(
            "inference_scheduler_tenant_fairness_jain",
            "Jain's index of tokens served to the active tenants over the window (1 = equal)",
            registry=r,
        )

    def lease_started(self, lease: Lease, how: str) -> None:
        """Counts a lease start (per grant: the labelled child is looked up once)."""
        child = self._start_counts.get(how)
        if child is None:
            child = self._start_counts[how] = self.lease_starts.labels(how)
        child.inc()

    def lease_ended(self, lease: Lease, outcome: Outcome, usage: Usage | None) -> None:
        """Counts a lease's end, and the tokens its worker reports it generated."""
        self.lease_ends.labels(outcome.value).inc()
        self._count_served(lease, usage)

    def lease_reconciled(self, lease: Lease, outcome: Outcome, usage: Usage | None) -> None:
        """A lease that ended here unreported, settled by a late report (its worker's, or its
        router's resubmission)."""
        self.lease_reconciliations.labels(outcome.value).inc()
        self._count_served(lease, usage)

    def _count_served(self, lease: Lease, usage: Usage | None) -> None:
        if usage is not None and usage.completion_tokens:
            self.served.add(lease.tenant_id, usage.completion_tokens)
            self.served_tokens.labels(lease.tenant_id).inc(usage.completion_tokens)

    def resumed(self, previous: Outcome) -> None:
        """A router resubmits a request whose lease ended early (`previous`: as it saw it)."""
        self.lease_lost.labels(_LOST_REASONS.get(previous, "worker_lost")).inc()

    def refresh(self, coordinator) -> None:
        """Copies queue, lease and device state into the gauges (event loop only)."""
        for action, count in coordinator.actions.items():
            self.scheduler_actions.labels(action).inc(count)
        coordinator.actions.clear()
        snapshot = coordinator.snapshot()
        for priority, depth in snapshot.queues.items():
            self.queue_depth.labels(priority_label(priority)).set(depth)
        self._refresh_workers(snapshot.workers)
        for decision, _ in snapshot.scaling:
            model_id = decision.model_id
            self.desired_workers.labels(model_id).set(decision.desired)
            self.model_workers.labels(model_id).set(decision.current)
            self.model_utilization.labels(model_id).set(decision.recommendation.utilization)
        index = self.served.jain_index()
        self.fairness.set(index if index is not None else 1.0)

    def _refresh_workers(self, workers) -> None:
        """Per-worker gauges. A worker's labelled children are kept from one refresh to the
        next and only set (making a child costs far more than setting it: re-making them
        every tick took a sixth of the scheduler's CPU at 1,000 workers); those of a worker
        gone, or of a GPU it no longer reports, are removed."""
        by_state = dict.fromkeys((state.value for state in WorkerState), 0)
        devices: dict[str, tuple[str, object]] = {}
        for record, session in workers:
            by_state[record.state.value] += 1
            leases, slots = self._per_worker.get(record.worker_id) or self._add_worker(record)
            leases.set(len(record.leases))
            slots.set(sum(m.max_slots for m in record.models.values() if m.ready))
            device = session.device if session else None
            if device is not None:
                devices[record.worker_id] = (device.gpu_id or record.gpu_id, device)
        for worker_id in set(self._per_worker) - {record.worker_id for record, _ in workers}:
            del self._per_worker[worker_id]
            self.leases.remove(worker_id)
            self.slots.remove(worker_id)
        self._refresh_devices(devices)
        for state, count in by_state.items():
            self.workers.labels(state).set(count)

    def _add_worker(self, record) -> tuple[Gauge, Gauge]:
        children = (self.leases.labels(record.worker_id), self.slots.labels(record.worker_id))
        self._per_worker[record.worker_id] = children
        return children

    def _refresh_devices(self, devices: dict[str, tuple[str, object]]) -> None:
        """GPU gauges of the workers that report a device, labelled by worker and GPU."""
        gauges = (self.gpu_utilization, self.gpu_memory_used, self.gpu_memory_total)
        for worker_id, (gpu_id, _) in list(self._per_gpu.items()):
            if devices.get(worker_id, (None,))[0] != gpu_id:
                del self._per_gpu[worker_id]
                for gauge in gauges:
                    gauge.remove(worker_id, gpu_id)
        for worker_id, (gpu_id, device) in devices.items():
            known = self._per_gpu.get(worker_id)
            if known is None:
                known = self._per_gpu[worker_id] = (
                    gpu_id,
                    [g.labels(worker_id, gpu_id) for g in gauges],
                )
            utilization, used, total = known[1]
            utilization.set(device.utilization_percent / 100.0)
            used.set(device.memory_used_bytes)
            total.set(device.memory_total_bytes)


def priority_label(priority: Priority) -> str:
    return priority.name.lower()
