"""The local actuator's pure core: which worker processes to start and stop so that each
model has the number of workers the scheduler wants.

Devices: one worker per GPU the actuator may use; where it has none (or all are taken and
`cpu_fallback` is on), up to `cpu_slots` workers on the CPU. Simulated models never touch
the device, so they always take CPU slots. A real model gets at most `cpu_per_model`
workers on the CPU: they share its cores, so one more adds contention, not capacity (each
worker already runs its model on as many threads as there are cores). A stopping worker
keeps its device until its process exits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Devices:
    gpus: tuple[int, ...]  # GPU indices the actuator may pin workers to
    cpu_slots: int  # workers that may run on the CPU at once
    cpu_fallback: bool = False  # with every GPU taken, a real model may run on the CPU
    cpu_per_model: int = 0  # CPU workers one real model may have; 0: no bound

    def free(self, held: list[str], simulated: bool) -> str | None:
        """A free device ("gpu-N" or "cpu") for a new worker, or None."""
        if self.gpus and not simulated:
            for index in self.gpus:
                if f"gpu-{index}" not in held:
                    return f"gpu-{index}"
            if not self.cpu_fallback:
                return None
        return "cpu" if held.count("cpu") < self.cpu_slots else None


@dataclass(frozen=True)
class WorkerProcess:
    """One worker process the actuator runs, as the plan sees it."""

    worker_id: str
    model_id: str
    device: str  # "gpu-N" or "cpu"
    started_at: float  # clock seconds
    stopping: bool = False  # SIGTERM sent: draining, then exits
    active_leases: int = 0  # from the scheduler's status; 0 while not registered


@dataclass(frozen=True)
class Start:
    model_id: str
    device: str


@dataclass(frozen=True)
class Stop:
    worker_id: str


def reconcile(
    desired: Mapping[str, int],
    processes: list[WorkerProcess],
    devices: Devices,
    simulated: frozenset[str] = frozenset(),
    held_back: frozenset[str] = frozenset(),
) -> list[Start | Stop]:
    """Actions that move the running workers toward `desired`. Models absent from
    `desired` are left as they are; `held_back` models start nothing (restart backoff).
    Stops pick the workers with the fewest leases, newest first (a worker still starting
    holds none); starts go first to models with no worker at all (requests wait on them)."""
    actions: list[Start | Stop] = []
    running: dict[str, list[WorkerProcess]] = {}
    for process in processes:
        if not process.stopping:
            running.setdefault(process.model_id, []).append(process)
    for model_id in sorted(desired):
        extra = len(running.get(model_id, [])) - desired[model_id]
        if extra > 0:
            victims = sorted(running[model_id], key=lambda p: (p.active_leases, -p.started_at))
            actions += [Stop(p.worker_id) for p in victims[:extra]]
    held = [p.device for p in processes]
    on_cpu = {m: sum(p.device == "cpu" for p in ps) for m, ps in running.items()}
    missing = {
        m: desired[m] - len(running.get(m, []))
        for m in desired
        if m not in held_back and desired[m] > len(running.get(m, []))
    }
    order = sorted(missing, key=lambda m: (len(running.get(m, [])) > 0, m))
    while missing:  # one worker per model in turn, so scarce devices are shared
        for model_id in order:
            if missing.get(model_id, 0) <= 0:
                continue
            device = devices.free(held, model_id in simulated)
            capped = devices.cpu_per_model and model_id not in simulated
            if device == "cpu" and capped and on_cpu.get(model_id, 0) >= devices.cpu_per_model:
                device = None  # its CPU workers would only share the same cores
            missing[model_id] = 0 if device is None else missing[model_id] - 1
            if device == "cpu":
                on_cpu[model_id] = on_cpu.get(model_id, 0) + 1
            if device is not None:
                held.append(device)
                actions.append(Start(model_id, device))
        missing = {m: n for m, n in missing.items() if n > 0}
    return actions
