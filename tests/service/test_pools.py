"""Pools of schedulers: the router sends each model to its pool's scheduler, merges the
model lists and status views, and a pool whose scheduler is down fails only its models."""

import grpc
import pytest
from inference.v1 import router_pb2_grpc, types_pb2

from services.common.status import RETRY_AFTER_KEY
from services.router.config import RouterConfig
from services.router.server import RouterServer
from services.scheduler.config import SchedulerConfig, with_overrides
from services.scheduler.server import SchedulerServer
from tests.stack import LOOPBACK, Stack, request, sim_model


async def pool(models) -> Stack:
    """One pool: a scheduler and one worker serving `models` (no router yet)."""
    config = SchedulerConfig(
        listen=LOOPBACK,
        metrics_listen=LOOPBACK,
        heartbeat_interval_ms=100,
        catalog={m.model_id: m for m in models},
    )
    scheduler = SchedulerServer(with_overrides(config, recovery_s=0.0, warmup_s=0.0))
    await scheduler.start()
    stack = Stack(scheduler, router=None)  # type: ignore[arg-type]
    await stack.add_worker(models)
    return stack


@pytest.fixture
async def two_pools():
    a_model = sim_model("sim-a")
    b_model = sim_model("sim-b")
    a, b = await pool([a_model]), await pool([b_model])
    router = RouterServer(
        RouterConfig(
            listen=LOOPBACK,
            metrics_listen=LOOPBACK,
            http_listen="",
            scheduler_address=a.scheduler_address,
            pools={"b": b.scheduler_address},
            model_pools={"sim-b": "b"},
            model_refresh_s=0.0,
            status_cache_s=0.0,
            scheduler_wait_s=0.5,
            allow_anonymous=True,
        )
    )
    await router.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    yield router_pb2_grpc.RouterStub(channel), a, b
    await channel.close()
    await router.stop(0)
    for stack in (a, b):
        for worker in stack.workers:
            await worker.stop()
        await stack.scheduler.stop(0)


async def test_each_model_goes_to_its_pools_scheduler_and_the_views_are_merged(two_pools):
    stub, a, b = two_pools
    for model, stack in (("sim-a", a), ("sim-b", b)):
        answer = await stub.Infer(request(model, max_tokens=3))
        assert answer.completion_tokens == 3
        assert answer.worker_id == stack.workers[0].worker_id
    listed = await stub.ListModels(types_pb2.ListModelsRequest())
    assert {m.model_id for m in listed.models} == {"sim-a", "sim-b"}
    status = await stub.GetStatus(types_pb2.GetStatusRequest())
    workers = {w.worker_id for w in status.workers}
    assert workers == {a.workers[0].worker_id, b.workers[0].worker_id}
    assert status.total_slots == 8  # 4 slots in each pool


async def test_a_pool_whose_scheduler_is_down_fails_only_its_own_models(two_pools):
    stub, a, b = two_pools
    await stub.ListModels(types_pb2.ListModelsRequest())  # both pools' lists are known
    for worker in b.workers:
        await worker.stop()
    await b.scheduler.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request("sim-b", max_tokens=3), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(info.value.trailing_metadata() or ())[RETRY_AFTER_KEY]
    answer = await stub.Infer(request("sim-a", max_tokens=3))  # the other pool serves on
    assert answer.completion_tokens == 3
    listed = await stub.ListModels(types_pb2.ListModelsRequest())  # the last list is kept
    assert {m.model_id for m in listed.models} == {"sim-a", "sim-b"}
    status = await stub.GetStatus(types_pb2.GetStatusRequest())
    assert [w.worker_id for w in status.workers] == [a.workers[0].worker_id]
    b.workers.clear()
