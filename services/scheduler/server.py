"""Assembles the scheduler process: core, coordinator, servicer, sweeper."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from inference.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common.lease_token import public_key_text
from services.common.leased_run import LeasedRun
from services.common.metrics import MetricsEndpoint
from services.common.server import SESSION_WATCH_OPTIONS, GrpcService
from services.common.worker_channels import WorkerChannels
from services.scheduler import convert
from services.scheduler.config import SchedulerConfig
from services.scheduler.coordinator import Coordinator, sweep_forever
from services.scheduler.core.fairness import ServedTokens
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.servicer import SchedulerServicer

log = logging.getLogger(__name__)
SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name
# With mTLS, who may call what (by the role its certificate names)
_ROUTER, _WORKER = frozenset({"router"}), frozenset({"worker"})
_VIEWERS = frozenset({"router", "actuator"})
CALLER_ROLES = {
    f"/{SERVICE_NAME}/{method}": roles
    for method, roles in {
        "Acquire": _ROUTER,
        "Tickets": _ROUTER,
        "Schedule": _ROUTER,
        "Embed": _ROUTER,
        "WorkerSession": _WORKER,
        "ListModels": _VIEWERS,
        "GetStatus": _VIEWERS,
    }.items()
}


class SchedulerServer:
    """A running scheduler. `start()` binds; `port` is the bound port."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        core = SchedulerCore(
            {k: convert.entry_from_spec(v) for k, v in config.catalog.items()},
            time.monotonic,
            config.core_settings(),
            lease_prefix=f"lease-{os.urandom(4).hex()}",
        )
        self.metrics = SchedulerMetrics(ServedTokens(config.fairness_window_s, time.monotonic))
        self.coordinator = Coordinator(core, convert.worker_command, self.metrics)
        self.lease_signer = config.lease_signer()
        log.info(
            "leases signed with key %s (%s); workers may pin its public key %s",
            self.lease_signer.key_id,
            "from " + config.lease_signing_key_file
            if config.lease_signing_key_file
            else "drawn at this start",
            public_key_text(self.lease_signer.public_key),
        )
        tls = config.tls()
        self.workers = WorkerChannels(config.internal_secret, tls)  # for Schedule (deprecated)
        self.metrics_endpoint = MetricsEndpoint(self.metrics.registry, config.metrics_listen)
        self.grpc = GrpcService(
            config.listen,
            [SERVICE_NAME],
            config.shutdown_grace_s,
            config.internal_secret,
            tls,
            roles=CALLER_ROLES,
            options=SESSION_WATCH_OPTIONS,
        )
        self.servicer = SchedulerServicer(
            self.coordinator,
            (config.heartbeat_interval_ms, config.quiet_heartbeats),
            self.metrics,
            self.lease_signer,
            config.dispatch.lease_start_timeout_s,
            lambda acquire: LeasedRun(acquire, self.workers, config.max_resumes),
        )
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(self.servicer, self.grpc.server)
        self._sweeper: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> int:
        port = await self.grpc.start()
        interval = self.config.heartbeat_interval_ms / 1000.0 / 2
        self.metrics.registry.bind(
            asyncio.get_running_loop(), lambda: self.metrics.refresh(self.coordinator)
        )
        self._sweeper = asyncio.create_task(sweep_forever(self.coordinator, interval))
        self.metrics_endpoint.start()
        return port

    async def stop(self, grace_s: float | None = None) -> None:
        """Ends worker sessions, lets in-flight requests finish within the grace period."""
        await self.grpc.set_serving(False)
        self.coordinator.end_all_sessions()
        self.servicer.end_ticket_streams()
        await self.grpc.stop(grace_s)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.workers.close()
        self.metrics_endpoint.stop()
