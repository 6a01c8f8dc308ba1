"""Assembles the router process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from inference.v1 import router_pb2, router_pb2_grpc, scheduler_pb2_grpc

from services.common.config import is_loopback
from services.common.errors import Unavailable
from services.common.internal_auth import internal_channel
from services.common.leased_run import LeasedRun
from services.common.metrics import MetricsEndpoint
from services.common.server import CHANNEL_OPTIONS, GrpcService
from services.common.worker_channels import IDLE_CLOSE_S, WorkerChannels
from services.router.admission import Admission
from services.router.config import RouterConfig
from services.router.door import DoorInterceptor, door_options
from services.router.http_gateway import HttpGateway
from services.router.metrics import RouterMetrics
from services.router.models import ModelDirectory
from services.router.pools import Pools
from services.router.prompt_blocks import PromptBlocks
from services.router.scheduler_client import SchedulerClient
from services.router.servicer import RouterServicer

log = logging.getLogger(__name__)
SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


class RouterServer:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.channels = {
            pool: internal_channel(
                address, config.internal_secret, CHANNEL_OPTIONS, config.tls(), "scheduler"
            )
            for pool, address in config.scheduler_addresses().items()
        }
        self.pools = Pools(
            {
                pool: SchedulerClient(
                    scheduler_pb2_grpc.SchedulerStub(channel),
                    config.scheduler_wait_s,
                    config.max_waiting_per_scheduler,
                )
                for pool, channel in self.channels.items()
            },
            config.model_pools,
        )
        # a channel idle past any call's deadline carries no call: then it may close
        idle_close_s = max(IDLE_CLOSE_S, config.max_deadline_s + 60.0)
        self.workers = WorkerChannels(config.internal_secret, config.tls(), idle_close_s)
        runner = LeasedRun(self.pools.acquire, self.workers, config.max_resumes)
        self.models = ModelDirectory(self.pools, config.model_refresh_s)
        self.metrics = RouterMetrics()
        admission = self.admission = Admission(config, self.metrics)
        self.grpc = GrpcService(
            config.listen,
            [SERVICE_NAME],
            grace_s=config.shutdown_grace_s,
            tls=config.public_tls(),
            door=[DoorInterceptor(admission.tenant)],
            options=door_options(
                config.max_request_bytes,
                config.max_streams_per_connection,
                config.max_metadata_bytes,
            ),
        )
        self.http: HttpGateway | None = None
        self.metrics_endpoint = MetricsEndpoint(self.metrics.registry, config.metrics_listen)
        router_pb2_grpc.add_RouterServicer_to_server(
            RouterServicer(
                config,
                self.pools,
                runner,
                self.models,
                admission,
                self.metrics,
                PromptBlocks(config.models, Path(config.model_cache_dir)),
            ),
            self.grpc.server,
        )

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> int:
        # the HTTP door calls the gRPC service on a loopback port of its own (plaintext, so
        # it needs no certificate of the public port's name)
        own = self.grpc.bind_loopback() if self.config.http_listen else 0
        port = await self.grpc.start()
        self.metrics_endpoint.start()
        public = [a for a in (self.config.listen, self.config.http_listen) if a]
        if not self.config.public_tls().enabled and not all(map(is_loopback, public)):
            log.warning(
                "the door serves plaintext off loopback: API keys cross the network in clear "
                "unless TLS ends in front of it (public_tls_cert_file, public_tls_key_file)"
            )
        with contextlib.suppress(Unavailable):  # the model list, if a scheduler answers now
            await self.models.refresh()
        if self.config.http_listen:
            self.http = HttpGateway(
                f"127.0.0.1:{own}",
                self.config.max_request_bytes,
                self.models,
                self.config.max_streams_per_connection,
                self.admission.caller_of,
            )
            tls = self.config.public_tls()
            await self.http.start(
                self.config.http_listen,
                tls.ssl_context() if tls.enabled else None,
                self.config.shutdown_grace_s,
            )
        return port

    async def stop(self, grace_s: float | None = None) -> None:
        """Both doors drain together, within the grace period: health says NOT_SERVING at
        once, no new call or connection is taken, and calls in flight finish or are cut."""
        await self.grpc.set_serving(False)
        doors = [self.grpc.stop(grace_s)]
        if self.http is not None:
            doors.append(self.http.stop())
        await asyncio.gather(*doors)
        for client in self.pools.clients.values():  # their ticket streams, then channels
            await client.close()
        for channel in self.channels.values():
            await channel.close()
        await self.workers.close()
        self.metrics_endpoint.stop()
