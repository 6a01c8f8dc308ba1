"""Placement of models on GPUs: which worker loads a model, and what it unloads for room.

A pure function of the workers (their memory budget, the models they hold and can load) and
the demand (models with requests waiting that no worker has room for):

- a model in demand with no load under way is loaded on the ready worker with the most free
  memory that can hold it;
- failing that, on the worker where unloading the fewest cold models makes room, a cold model
  being one with no lease and no request waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field

from services.scheduler.core.types import WorkerRecord


@dataclass(frozen=True)
class LoadModel:
    worker_id: str
    model_id: str


@dataclass(frozen=True)
class UnloadModel:
    worker_id: str
    model_id: str


Command = LoadModel | UnloadModel


@dataclass
class PendingLoads:
    """Load commands sent and not yet seen in a heartbeat. A load stays pending until the
    worker reports the model, leaves, or `timeout_s` passes (then it may be placed again)."""

    timeout_s: float
    _sent: dict[tuple[str, str], float] = field(default_factory=dict)  # (worker, model) → when

    def __contains__(self, model_id: str) -> bool:
        return any(m == model_id for _, m in self._sent)

    def models(self) -> set[str]:
        return {m for _, m in self._sent}

    def sent(self, commands: Iterable[Command], now: float) -> None:
        for command in commands:
            if isinstance(command, LoadModel):
                self._sent[(command.worker_id, command.model_id)] = now

    def expire(self, worker: Callable[[str], WorkerRecord | None], now: float) -> None:
        """Forgets loads that are done (the worker reports the model), lost or too old."""
        for (worker_id, model_id), since in list(self._sent.items()):
            record = worker(worker_id)
            if record is None or model_id in record.models or now - since > self.timeout_s:
                del self._sent[(worker_id, model_id)]


def memory_needed(worker: WorkerRecord, model_id: str, catalog_bytes: Mapping[str, int]) -> int:
    return worker.loadable.get(model_id) or catalog_bytes.get(model_id, 0)


def can_host(worker: WorkerRecord, model_id: str, catalog_bytes: Mapping[str, int]) -> bool:
    """The worker could load the model, if need be after unloading everything else."""
    return (
        worker.accepts_leases
        and worker.memory_budget > 0
        and model_id in worker.loadable
        and memory_needed(worker, model_id, catalog_bytes) <= worker.memory_budget
    )


def plan(
    workers: list[WorkerRecord],
    starved: set[str],
    waiting: set[str],
    loading: set[str],
    catalog_bytes: Mapping[str, int],
) -> list[Command]:
    """Commands that place each starved model (waiting, no room anywhere, none loading).
    `waiting` holds every model with requests queued: those are never unloaded."""
    commands: list[Command] = []
    busy: set[str] = set()  # workers already given a command in this plan
    for model_id in sorted(starved - loading):
        hosts = [
            w
            for w in workers
            if w.worker_id not in busy
            and model_id not in w.models
            and can_host(w, model_id, catalog_bytes)
        ]
        chosen = _place(hosts, model_id, waiting, catalog_bytes)
        if chosen is None:
            continue
        worker, evict = chosen
        commands += [UnloadModel(worker.worker_id, m) for m in evict]
        commands.append(LoadModel(worker.worker_id, model_id))
        busy.add(worker.worker_id)
    return commands


def _place(
    hosts: list[WorkerRecord], model_id: str, waiting: set[str], catalog_bytes: Mapping[str, int]
) -> tuple[WorkerRecord, list[str]] | None:
    best: tuple[int, int, WorkerRecord, list[str]] | None = None
    for worker in hosts:
        need = memory_needed(worker, model_id, catalog_bytes)
        free = worker.memory_free()
        evict: list[str] = []
        cold = sorted(
            (
                (max(s.memory_bytes, worker.loadable.get(m, 0)), m)
                for m, s in worker.models.items()
                if m not in waiting and s.active == 0
            ),
            reverse=True,
        )
        for size, cold_model in cold:
            if free >= need:
                break
            evict.append(cold_model)
            free += size
        if free < need:
            continue
        key = (len(evict), -free)
        if best is None or key < best[:2]:
            best = (*key, worker, evict)
    return None if best is None else (best[2], best[3])


class ModelPlacer:
    """The workers that may load models on command (a memory budget and a loadable list),
    the loads under way, and the commands that give starved models a worker. Workers that
    cannot load anything are never looked at, so a fleet of fixed workers costs nothing here."""

    def __init__(self, load_timeout_s: float, worker: Callable[[str], WorkerRecord | None]):
        self.loading = PendingLoads(load_timeout_s)
        self._worker = worker
        self._placeable: set[str] = set()

    def worker_changed(self, record: WorkerRecord) -> None:
        if record.loadable and record.memory_budget:
            self._placeable.add(record.worker_id)
        else:
            self._placeable.discard(record.worker_id)

    def worker_left(self, worker_id: str) -> None:
        self._placeable.discard(worker_id)

    def can_host(self, model_id: str, catalog_bytes: Mapping[str, int]) -> bool:
        """Some worker could load the model."""
        return any(can_host(w, model_id, catalog_bytes) for w in self._workers())

    def plan(
        self, waiting: set[str], room: Container[str], catalog_bytes: Mapping[str, int], now: float
    ) -> list[Command]:
        """Load (and unload) commands that give starved models (waiting, no room anywhere,
        none loading) a worker. A load stays pending until a heartbeat shows the model on
        the worker, or the timeout."""
        if not self._placeable:
            return []
        self.loading.expire(self._worker, now)
        starved = {m for m in waiting if m not in room and m not in self.loading}
        if not starved:
            return []
        loading = self.loading.models()
        commands = plan(self._workers(), starved, waiting, loading, catalog_bytes)
        self.loading.sent(commands, now)
        return commands

    def _workers(self) -> list[WorkerRecord]:
        return [w for w in map(self._worker, sorted(self._placeable)) if w is not None]
