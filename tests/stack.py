"""Starts real router, scheduler and worker servers in-process on 127.0.0.1:0 for tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import grpc
from inference.v1 import router_pb2_grpc, scheduler_pb2_grpc, types_pb2

from services.common.catalog import GpuProfile, ModelSpec, SimulationSpec
from services.gpu_worker.config import WorkerConfig
from services.gpu_worker.server import WorkerServer
from services.router.config import RouterConfig, TenantSpec
from services.router.server import RouterServer
from services.scheduler.config import SchedulerConfig, with_overrides
from services.scheduler.server import SchedulerServer

LOOPBACK = "127.0.0.1:0"


def sim_model(model_id: str = "sim-fast", slots: int = 4, step_ms: float = 2.0) -> ModelSpec:
    """A simulated model quick enough for tests."""
    return ModelSpec(
        model_id=model_id,
        engine="simulated",
        max_context_tokens=4096,
        max_output_tokens=256,
        default_max_tokens=16,
        max_slots=slots,
        simulation=SimulationSpec(
            gpu_type="test", profiles={"test": GpuProfile(1e6, step_ms, 0.02, 1_000_000)}
        ),
    )


@dataclass
class Stack:
    scheduler: SchedulerServer
    router: RouterServer
    workers: list[WorkerServer] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def router_address(self) -> str:
        return f"127.0.0.1:{self.router.port}"

    @property
    def scheduler_address(self) -> str:
        return f"127.0.0.1:{self.scheduler.port}"

    def router_stub(self) -> router_pb2_grpc.RouterStub:
        channel = grpc.aio.insecure_channel(self.router_address)
        self.channels.append(channel)
        return router_pb2_grpc.RouterStub(channel)

    def scheduler_stub(self) -> scheduler_pb2_grpc.SchedulerStub:
        channel = grpc.aio.insecure_channel(self.scheduler_address)
        self.channels.append(channel)
        return scheduler_pb2_grpc.SchedulerStub(channel)

    async def add_worker(
        self, catalog: Sequence[ModelSpec], wait: bool = True, **overrides: object
    ) -> WorkerServer:
        config = WorkerConfig(
            listen=LOOPBACK,
            metrics_listen=LOOPBACK,
            scheduler_address=self.scheduler_address,
            flush_interval_ms=0.0,
            shutdown_grace_s=2.0,
            catalog={m.model_id: m for m in catalog},
        )
        worker = WorkerServer(replace(config, **overrides), device="cpu")
        await worker.start()
        self.workers.append(worker)
        if wait:
            await self.wait_workers(len(self.workers))
        return worker

    async def wait_workers(self, count: int, timeout_s: float = 10.0) -> None:
        """Waits until the scheduler knows `count` workers with every model ready."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            workers = [r for r, _ in self.scheduler.coordinator.snapshot().workers]
            if len(workers) == count and all(s.ready for w in workers for s in w.models.values()):
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"scheduler did not see {count} ready workers")

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.router.stop(0)
        for worker in self.workers:
            await worker.stop()
        await self.scheduler.stop(0)


async def start_stack(
    models: Sequence[ModelSpec] = (),
    workers: int = 1,
    tenants: Sequence[TenantSpec] = (),
    allow_anonymous: bool = True,
    secret: str = "",
    router_overrides: dict | None = None,
    **scheduler_overrides: object,
) -> Stack:
    models = list(models) or [sim_model()]
    scheduler_config = SchedulerConfig(
        listen=LOOPBACK,
        metrics_listen=LOOPBACK,
        heartbeat_interval_ms=100,
        heartbeat_misses=5,
        internal_secret=secret,
        catalog={m.model_id: m for m in models},
    )
    overrides = {"warmup_s": 0.0, "recovery_s": 0.0} | scheduler_overrides
    scheduler = SchedulerServer(with_overrides(scheduler_config, **overrides))
    await scheduler.start()
    router = RouterServer(
        RouterConfig(
            listen=LOOPBACK,
            metrics_listen=LOOPBACK,
            http_listen=LOOPBACK,
            scheduler_address=f"127.0.0.1:{scheduler.port}",
            model_refresh_s=0.0,
            tenants=tuple(tenants),
            models={m.model_id: m for m in models},
            allow_anonymous=allow_anonymous,
            internal_secret=secret,
            **(router_overrides or {}),
        )
    )
    await router.start()
    stack = Stack(scheduler, router)
    for _ in range(workers):
        await stack.add_worker(models, internal_secret=secret)
    return stack


def request(model_id: str = "sim-fast", prompt: str = "Hello", **fields: object):
    return types_pb2.GenerateRequest(model_id=model_id, prompt=prompt, **fields)
