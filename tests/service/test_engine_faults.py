"""A model step that fails makes the worker report unhealthy; it takes no more leases, says
NOT_SERVING to health probes, is not counted as capacity, and retires itself so that its
supervisor starts a fresh one."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gpu_worker.engines.base import EngineStats, GenerationInput, ModelState, Sink
from services.gpu_worker.server import EXIT_UNHEALTHY
from services.scheduler.core.types import WorkerState
from tests.service.test_scheduling import wait_until
from tests.stack import request, start_stack


class FaultyEngine:
    """Implements the Engine protocol; every step fails like a device error would."""

    def __init__(self, spec) -> None:
        self.spec = spec
        self.state = ModelState.READY
        self.healthy = True
        self.submitted = 0
        self.prefix_cache = None

    def load(self) -> None: ...

    def submit(self, request: GenerationInput, sink: Sink):
        self.submitted += 1
        self.healthy = False
        sink(RuntimeError("CUDA error: an illegal memory access was encountered"))
        return self

    def cancel(self) -> None: ...

    def active_sequences(self) -> int:
        return 0

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 0, 0.0, 0, self.spec.max_slots)

    def close(self) -> None: ...


async def test_a_failing_model_step_marks_the_worker_unhealthy(stack):
    worker = stack.workers[0]
    spec = worker.host.engines["sim-fast"].spec
    worker.host.engines["sim-fast"] = FaultyEngine(spec)
    stub = stack.router_stub()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

        async def says_not_serving() -> bool:
            answer = await health.Check(health_pb2.HealthCheckRequest())
            return answer.status == not_serving

        for _ in range(100):
            if await says_not_serving():
                break
            await asyncio.sleep(0.05)
        assert await says_not_serving()
    await wait_until(lambda: worker.exit_code == EXIT_UNHEALTHY)  # it retires itself
    stack.scheduler.coordinator.tick()
    [scaling] = stack.scheduler.coordinator.state.decisions.values()
    assert scaling.current == 0  # an unhealthy worker is no capacity
    assert "internal" not in (info.value.details() or "").lower()
    core = stack.scheduler.coordinator.state
    await wait_until(lambda: core.workers()[0].state is WorkerState.UNHEALTHY)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_request_that_fails_two_workers_is_not_moved_to_a_third():
    stack = await start_stack(workers=3)
    try:
        faulty = []
        for worker in stack.workers:
            engine = FaultyEngine(worker.host.engines["sim-fast"].spec)
            worker.host.engines["sim-fast"] = engine
            faulty.append(engine)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.router_stub().Infer(request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "failed on 2 workers" in info.value.details()
        assert sum(engine.submitted for engine in faulty) == 2  # poison: no third victim
    finally:
        await stack.close()
