"""Assembles the worker process: model host, servicer, scheduler session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from inference.v1 import scheduler_pb2, worker_pb2, worker_pb2_grpc

from services.common.metrics import MetricsEndpoint
from services.common.server import GrpcService
from services.gpu_worker import convert
from services.gpu_worker.commands import Command, WorkerCommand
from services.gpu_worker.config import WorkerConfig
from services.gpu_worker.host import ModelHost
from services.gpu_worker.leases import LeaseBook
from services.gpu_worker.metrics import WorkerMetrics
from services.gpu_worker.servicer import WorkerServicer
from services.gpu_worker.session import SchedulerSession
from services.gpu_worker.telemetry import DeviceProbe, DeviceSample, open_probe

log = logging.getLogger(__name__)

DISPATCH_SETTLE_S = 0.3  # a heartbeat round trip plus a dispatch, on loopback
HEALTH_CHECK_S = 0.5  # how often the worker looks at its engines' health
EXIT_UNHEALTHY = 3  # the process's exit status when it retires itself as unhealthy
SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
# With mTLS, who may run work here: routers, and the scheduler for routers of the previous
# release (Scheduler.Schedule); the lease itself is checked for every call
LEASE_HOLDERS = frozenset({"router", "scheduler"})


class WorkerServer:
    """A running worker. `start()` binds, registers with the scheduler, then loads models
    (reported as loading until ready)."""

    def __init__(self, config: WorkerConfig, device: str, probe: DeviceProbe | None = None):
        self.config = config
        self.probe = probe or open_probe(config.gpu_index, device)
        sample = self._last_sample = self.probe.sample()
        self.gpu_id = sample.gpu_id
        self.metrics = WorkerMetrics(config.price_per_hour(sample.name, sample.is_cpu))
        self.metrics_endpoint = MetricsEndpoint(self.metrics.registry, config.metrics_listen)
        self.host = ModelHost(
            config.catalog,
            config.model_ids,
            Path(config.cache_dir),
            device,
            sample.name,
            on_loaded=self.metrics.model_loaded,
        )
        self.tls = config.tls()
        self.grpc = GrpcService(
            config.listen,
            [SERVICE_NAME],
            config.shutdown_grace_s,
            config.internal_secret,
            self.tls,
            roles={f"/{SERVICE_NAME}/{m}": LEASE_HOLDERS for m in ("Execute", "Embed")},
        )
        self.worker_id = ""
        self.exit_code = 0
        self._watch: asyncio.Task | None = None
        self._health_changed = asyncio.Event()
        self.session: SchedulerSession | None = None
        self.leases = LeaseBook(
            lambda: self.worker_id, self._report, pinned_keys=config.pinned_lease_keys()
        )

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self, load_models: bool = True) -> int:
        port = self.grpc.bind()
        self.worker_id = self.config.worker_id_for(port)
        worker_pb2_grpc.add_WorkerServicer_to_server(
            WorkerServicer(
                self.host,
                self.worker_id,
                self.gpu_id,
                self.config.flush_interval_ms / 1000.0,
                self.metrics,
                self.leases,
            ),
            self.grpc.server,
        )
        await self.grpc.start()
        self.metrics_endpoint.start()
        self.session = SchedulerSession(
            self.config.scheduler_address,
            self._registration,
            self._heartbeat,
            self._command,
            self.config.internal_secret,
            self.tls,
            on_accepted=self.leases.accepted,
        )
        self.session.start()
        self._watch = asyncio.create_task(self._watch_health())
        if load_models:
            await self.host.load_all()
            self.session.send_heartbeat_now()  # tell the scheduler at once
        return port

    async def stop(self) -> None:
        """Drains: no new work, in-flight streams finish within the grace period."""
        if self._watch is not None:
            self._watch.cancel()
        self._drain("shutting down")
        # requests leased before the scheduler heard of the drain may still be arriving
        await asyncio.sleep(min(DISPATCH_SETTLE_S, self.config.shutdown_grace_s))
        await self.host.wait_idle(self.config.shutdown_grace_s)
        await self.grpc.stop(grace_s=1.0)
        if self.session is not None:
            await self.session.stop()
        self.host.close()
        self.metrics_endpoint.stop()

    async def _watch_health(self) -> None:
        """Tells the truth about health: once an engine is unhealthy the worker serves
        NOT_SERVING on grpc.health.v1 (probes fail it), heartbeats say so (no leases, not
        counted as capacity), and with `exit_when_unhealthy` it finishes what runs and stops
        with EXIT_UNHEALTHY so that whatever supervises it starts a fresh worker."""
        while self.host.healthy:
            with contextlib.suppress(TimeoutError):  # engines turn unhealthy on their threads
                await asyncio.wait_for(self._health_changed.wait(), HEALTH_CHECK_S)
            self._health_changed.clear()
        log.error("an engine is unhealthy: this worker takes no more work")
        await self.grpc.set_serving(False)
        if self.session is not None:
            self.session.send_heartbeat_now()
        if self.config.exit_when_unhealthy:
            await self.host.wait_idle(self.config.shutdown_grace_s)
            self.exit_code = EXIT_UNHEALTHY
            self.grpc.request_stop()

    def _report(self, message: scheduler_pb2.WorkerSessionRequest) -> None:
        if self.session is not None:
            self.session.report(message)
        if not self.host.healthy:  # a lease failed as its engine died: say so at once,
            self._health_changed.set()  # before the scheduler grants it here again

    def _command(self, command: Command) -> None:
        """Obeys a scheduler command."""
        argument = command.argument
        match command.kind:
            case WorkerCommand.REVOKE_LEASE:
                self.leases.revoke(argument)
                return
            case WorkerCommand.DRAIN:
                self._drain(argument)
            case WorkerCommand.UNLOAD_MODEL:
                self.host.unload(argument)
            case WorkerCommand.LOAD_MODEL:
                task = asyncio.create_task(self.host.load(argument))
                task.add_done_callback(self._after_load)
        if self.session is not None:
            self.session.send_heartbeat_now()

    def _after_load(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("load command failed: %s", task.exception())
        if self.session is not None:
            self.session.send_heartbeat_now()

    def _drain(self, reason: str) -> None:
        if not self.host.draining:
            log.info("draining: %s", reason)
        self.host.draining = True
        if self.session is not None:
            self.session.send_heartbeat_now()

    def _sample(self) -> DeviceSample:
        """The device's figures; when a read fails, the last good ones (heartbeats go on)."""
        try:
            self._last_sample = self.probe.sample()
        except Exception:
            log.exception("reading device telemetry failed; reporting the last figures")
        return self._last_sample

    def _registration(self) -> scheduler_pb2.WorkerSessionRequest:
        sample = self._sample()
        return scheduler_pb2.WorkerSessionRequest(
            registration=scheduler_pb2.WorkerRegistration(
                worker_id=self.worker_id,
                address=self.config.advertise_for(self.port),
                device=convert.device(sample),
                models=[convert.worker_model(e) for e in self.host.engines.values()],
                loadable=[
                    convert.loadable_model(s)
                    for s in self.config.catalog.values()
                    if self.config.load_on_command
                ],
                memory_budget_bytes=self.config.memory_budget_bytes or sample.memory_total_bytes,
                leases=self.leases.running_claims(),
                prefix_caches=convert.prefix_reports(list(self.host.engines.values()), full=True),
            )
        )

    def _heartbeat(self, sequence: int) -> scheduler_pb2.WorkerSessionRequest:
        sample = self._sample()
        self.metrics.observe(sample, list(self.host.engines.values()))
        return convert.heartbeat(
            sequence,
            sample,
            list(self.host.engines.values()),
            self.host.healthy,
            self.host.draining,
            self.leases.running_ids(),
        )
