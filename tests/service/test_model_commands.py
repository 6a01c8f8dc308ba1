"""Scheduler commands load and unload models on a running worker."""

import grpc
import pytest

from services.scheduler.core.model_placement import LoadModel, UnloadModel
from tests.service.test_scheduling import wait_until
from tests.stack import request, sim_model, start_stack

FIRST = sim_model("sim-a")
SECOND = sim_model("sim-b")


@pytest.fixture
async def stack_with_catalog():
    """One worker that starts with sim-a and may load sim-b from its catalog."""
    stack = await start_stack([FIRST, SECOND], workers=0)
    await stack.add_worker([FIRST, SECOND], models="sim-a")
    yield stack
    await stack.close()


def models_on_worker(stack) -> dict[str, bool]:
    [worker] = stack.scheduler.coordinator.state.workers()
    return {m: s.ready for m, s in worker.models.items()}


async def test_load_then_unload_on_command(stack_with_catalog):
    stack = stack_with_catalog
    coordinator = stack.scheduler.coordinator
    worker_id = stack.workers[0].worker_id
    stub = stack.router_stub()
    assert models_on_worker(stack) == {"sim-a": True}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request("sim-b"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # known model, nobody serves it

    assert coordinator.sessions.send(worker_id, LoadModel(worker_id, "sim-b"))
    await wait_until(lambda: models_on_worker(stack).get("sim-b") is True)
    assert (await stub.Infer(request("sim-b", max_tokens=3))).completion_tokens == 3

    coordinator.sessions.send(worker_id, UnloadModel(worker_id, "sim-a"))
    await wait_until(lambda: "sim-a" not in models_on_worker(stack))
    assert "sim-a" not in stack.workers[0].host.engines
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request("sim-a"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_model_outside_the_catalog_is_not_loaded(stack_with_catalog):
    stack = stack_with_catalog
    worker_id = stack.workers[0].worker_id
    stack.scheduler.coordinator.sessions.send(worker_id, LoadModel(worker_id, "sim-z"))
    await stack.wait_workers(1)
    assert models_on_worker(stack) == {"sim-a": True}
