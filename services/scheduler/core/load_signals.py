"""What the scheduler sees of each model: its `ModelLoad` (the autoscaler's input) and its
`ModelView` (what ListModels shows), built from the scheduler's state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.scheduler.core.autoscaling import ModelLoad
from services.scheduler.core.rates import EventRates
from services.scheduler.core.types import (
    ModelCatalogEntry,
    ModelView,
    Priority,
    WorkerRecord,
    WorkerState,
)


def model_loads(
    entries: Iterable[ModelCatalogEntry],
    workers: Iterable[WorkerRecord],
    backlog: Mapping[tuple[Priority, str], tuple[int, float]],
    now: float,
    arrivals: EventRates,
    completions: EventRates,
) -> list[ModelLoad]:
    """One ModelLoad per catalog model. A worker counts for a model it has, ready or
    loading, unless it is draining (it is leaving) or unhealthy (it takes no leases and is
    being replaced); the leases of such workers still count as busy."""
    by_id = {e.model_id: e for e in entries}
    counted = dict.fromkeys(by_id, 0)
    busy = dict.fromkeys(by_id, 0)
    slots = {m: e.max_slots for m, e in by_id.items()}
    for worker in workers:
        for model_id, model in worker.models.items():
            if model_id not in by_id:
                continue
            busy[model_id] += model.active
            if worker.state is WorkerState.READY:
                counted[model_id] += 1
                slots[model_id] = max(1, model.max_slots)
    queued = {m: dict.fromkeys(Priority, 0) for m in by_id}
    oldest = {m: dict.fromkeys(Priority, 0.0) for m in by_id}
    for (priority, model_id), (count, oldest_at) in backlog.items():
        if model_id in by_id:
            queued[model_id][priority] = count
            oldest[model_id][priority] = now - oldest_at
    return [
        ModelLoad(
            model_id=m,
            workers=counted[m],
            slots_per_worker=slots[m],
            busy=busy[m],
            queued=queued[m],
            oldest_wait_s=oldest[m],
            arrival_rate=arrivals.rate(m) or 0.0,
            service_rate=completions.rate(m),
            mean_service_s=completions.mean_duration_s(m),
        )
        for m in sorted(by_id)
    ]


def model_views(
    entries: Mapping[str, ModelCatalogEntry], workers: Iterable[WorkerRecord]
) -> list[ModelView]:
    """Every known model with the workers ready to take its leases."""
    ready = dict.fromkeys(entries, 0)
    for worker in workers:
        for slots in worker.models.values():
            if worker.accepts_leases and slots.ready and slots.model_id in ready:
                ready[slots.model_id] += 1
    return [ModelView(entries[m], ready[m]) for m in sorted(entries)]
