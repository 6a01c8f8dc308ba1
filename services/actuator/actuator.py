"""The local actuator: follows the scheduler's desired worker counts by starting and
draining worker processes on this machine (what KEDA does on Kubernetes).

Every `poll_interval_s` it reads `GetStatus`, reaps exited workers, asks `plan.reconcile`
what to start and stop, and does it. Until the scheduler has settled a model's count (its
warm-up after a start) the model keeps its workers, and gets at least `min_workers`.

Stopping is a drain: SIGTERM makes the worker report `draining` (the scheduler grants it no
new leases), finish its streams and exit; a worker still running `stop_timeout_s` later is
killed (its streams resume on other workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from typing import Protocol

import grpc
from inference.v1 import types_pb2

from services.actuator.config import ActuatorConfig
from services.actuator.plan import Devices, Start, Stop, reconcile
from services.actuator.processes import LaunchSpec, ManagedWorker
from services.common.engine_python import worker_python

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
KILL_MARGIN_S = 10.0  # beyond the worker's own grace period


class StatusSource(Protocol):
    """Where desired counts come from: the scheduler's GetStatus."""

    async def status(self) -> types_pb2.GetStatusResponse: ...


class WorkerLauncher(Protocol):
    """What starts a worker process (processes.Launcher)."""

    async def start(self, spec: LaunchSpec) -> ManagedWorker: ...


class Actuator:
    def __init__(
        self,
        config: ActuatorConfig,
        devices: Devices,
        source: StatusSource,
        launcher: WorkerLauncher,
    ) -> None:
        self.config = config
        self.devices = devices
        self.source = source
        self.launcher = launcher
        self.workers: dict[str, ManagedWorker] = {}
        self._ids = itertools.count(1)
        # this actuator's run, in its workers' ids: after a restart, a new worker never takes
        # the id of one the scheduler still holds (draining, or dead and not yet declared)
        self._run = secrets.token_hex(3)
        self._backoff: dict[str, tuple[float, float]] = {}  # model → (until, next delay)
        self._simulated = frozenset(m for m, s in config.catalog.items() if s.simulated)
        # recent (time, "start" | "stop" | "exit", worker id), for tests and debugging
        self.events: deque[tuple[float, str, str]] = deque(maxlen=1024)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.step()
            except Exception:
                log.exception("actuator step failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.poll_interval_s)
        await self.shutdown()

    async def step(self) -> None:
        self._reap()
        try:
            status = await self.source.status()
        except grpc.RpcError as exc:  # scheduler down or restarting: change nothing
            log.warning(
                "no status from the scheduler (%s); keeping %d workers", exc, len(self.workers)
            )
            return
        desired = self._desired(status)
        leases = {w.worker_id: w.active_leases for w in status.workers}
        views = [w.view(leases.get(wid, 0)) for wid, w in self.workers.items()]
        now = time.monotonic()
        held_back = frozenset(m for m, (until, _) in self._backoff.items() if until > now)
        for action in reconcile(desired, views, self.devices, self._simulated, held_back):
            if isinstance(action, Start):
                await self._start(action)
            elif isinstance(action, Stop):
                self._stop(action.worker_id)
        self._kill_overdue()

    async def shutdown(self) -> None:
        """Drains every worker and waits for them to exit (killing the overdue)."""
        for worker in self.workers.values():
            worker.drain()
        exits = [asyncio.ensure_future(w.process.wait()) for w in self.workers.values()]
        if exits:
            await asyncio.wait(exits, timeout=self.config.stop_timeout_s + KILL_MARGIN_S)
        for worker in self.workers.values():
            worker.kill()
        await asyncio.gather(*(w.process.wait() for w in self.workers.values()))

    def _desired(self, status: types_pb2.GetStatusResponse) -> dict[str, int]:
        """The scheduler's desired counts; a catalog model it has not settled yet (it is
        warming up after a start) keeps its running workers, and at least its minimum."""
        running = self.counts()
        desired = {
            m: max(spec.min_workers, running.get(m, 0)) for m, spec in self.config.catalog.items()
        }
        desired.update({s.model_id: s.desired_workers for s in status.scaling})
        return desired

    def counts(self) -> dict[str, int]:
        """Running (not stopping) workers per model."""
        counts: dict[str, int] = {}
        for worker in self.workers.values():
            if worker.stop_requested_at is None and not worker.exited:
                counts[worker.spec.model_id] = counts.get(worker.spec.model_id, 0) + 1
        return counts

    async def _start(self, action: Start) -> None:
        index = self._free_index()
        worker_id = (
            f"{self.config.worker_id_prefix}-{action.model_id}-{self._run}-{next(self._ids)}"
        )
        spec = LaunchSpec(
            worker_id,
            action.model_id,
            action.device,
            index,
            self._address(self.config.worker_base_port, index),
            self._address(self.config.metrics_base_port, index)
            if self.config.metrics_base_port
            else "",
            worker_python(self._engine(action.model_id)),
        )
        self.workers[worker_id] = await self.launcher.start(spec)
        self.events.append((time.monotonic(), "start", worker_id))

    def _engine(self, model_id: str) -> str:
        spec = self.config.catalog.get(model_id)
        return spec.engine if spec is not None else ""

    def _stop(self, worker_id: str) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None:
            log.info(
                "draining worker %s (%s): fewer workers wanted", worker_id, worker.spec.model_id
            )
            worker.drain()
            self.events.append((time.monotonic(), "stop", worker_id))

    def _reap(self) -> None:
        now = time.monotonic()
        for worker_id, worker in list(self.workers.items()):
            if not worker.exited:
                continue
            del self.workers[worker_id]
            self.events.append((now, "exit", worker_id))
            model = worker.spec.model_id
            if worker.stop_requested_at is not None:
                log.info(
                    "worker %s exited after draining (code %s)",
                    worker_id,
                    worker.process.returncode,
                )
                continue
            _, delay = self._backoff.get(model, (0.0, self.config.restart_backoff_s))
            self._backoff[model] = (now + delay, min(MAX_BACKOFF_S, delay * 2))
            log.warning(
                "worker %s exited on its own (code %s); restarting %s in %.0fs at the earliest",
                worker_id,
                worker.process.returncode,
                model,
                delay,
            )
        for model, (until, delay) in list(self._backoff.items()):
            if until + 10 * delay < now:  # a quiet spell resets the backoff
                del self._backoff[model]

    def _kill_overdue(self) -> None:
        limit = self.config.stop_timeout_s + KILL_MARGIN_S
        for worker in self.workers.values():
            since = worker.stop_requested_at
            if since is not None and not worker.exited and time.monotonic() - since > limit:
                log.warning(
                    "worker %s still running %.0fs after SIGTERM: killed",
                    worker.spec.worker_id,
                    limit,
                )
                worker.kill()

    def _free_index(self) -> int:
        used = {w.spec.index for w in self.workers.values()}
        return next(i for i in itertools.count() if i not in used)

    def _address(self, base: int, index: int) -> str:
        port = base + index if base else 0
        return f"{self.config.worker_host}:{port}"
