"""A model step that fails makes the worker report unhealthy; it takes no more leases."""

import grpc
import pytest

from services.gpu_worker.engines.base import EngineStats, GenerationInput, ModelState, Sink
from services.scheduler.core.types import WorkerState
from tests.service.test_scheduling import wait_until
from tests.stack import request


class FaultyEngine:
    """Implements the Engine protocol; every step fails like a device error would."""

    def __init__(self, spec) -> None:
        self.spec = spec
        self.state = ModelState.READY
        self.healthy = True

    def load(self) -> None: ...

    def submit(self, request: GenerationInput, sink: Sink):
        self.healthy = False
        sink(RuntimeError("CUDA error: an illegal memory access was encountered"))
        return self

    def cancel(self) -> None: ...

    def active_sequences(self) -> int:
        return 0

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 0, 0.0, 0)

    def close(self) -> None: ...


async def test_a_failing_model_step_marks_the_worker_unhealthy(stack):
    worker = stack.workers[0]
    spec = worker.host.engines["sim-fast"].spec
    worker.host.engines["sim-fast"] = FaultyEngine(spec)
    stub = stack.router_stub()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "internal" not in (info.value.details() or "").lower()
    core = stack.scheduler.coordinator.core
    await wait_until(lambda: core.workers()[0].state is WorkerState.UNHEALTHY)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
