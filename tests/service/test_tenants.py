"""Tenants: rate limits with retry hints, permissions, concurrent streams."""

import asyncio
import hashlib

import grpc
import pytest
from inference.v1 import types_pb2

from services.common.status import RETRY_AFTER_KEY
from services.router.config import TenantSpec
from services.router.ratelimit import Limits
from tests.service.test_scheduling import wait_until
from tests.stack import request, sim_model, start_stack


def key(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer key-{tenant}"),)


def tenant(name: str, **fields) -> TenantSpec:
    return TenantSpec(name, hashlib.sha256(f"key-{name}".encode()).hexdigest(), **fields)


@pytest.fixture
async def tenants_stack():
    stack = await start_stack(
        [sim_model(), sim_model("sim-other")],
        tenants=[
            tenant("limited", limits=Limits(requests_per_s=1, burst_requests=2)),
            tenant("tokens", limits=Limits(tokens_per_s=10, burst_tokens=40)),
            tenant(
                "narrow",
                models=("sim-fast",),
                max_priority="medium",
                limits=Limits(max_concurrent_streams=1),
            ),
            tenant("free"),
        ],
        allow_anonymous=False,
    )
    yield stack
    await stack.close()


async def test_a_tenant_over_its_rate_is_refused_with_a_hint_while_another_is_served(
    tenants_stack,
):
    stub = tenants_stack.router_stub()
    for _ in range(2):  # the burst
        await stub.Infer(request(max_tokens=2), metadata=key("limited"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request(max_tokens=2), metadata=key("limited"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "requests/s" in info.value.details()
    assert 0 < int(dict(info.value.trailing_metadata())[RETRY_AFTER_KEY]) <= 1000
    answer = await stub.Infer(request(max_tokens=2), metadata=key("free"))
    assert answer.completion_tokens == 2


async def test_token_reservations_count_prompt_plus_max_tokens(tenants_stack):
    stub = tenants_stack.router_stub()
    await stub.Infer(request(max_tokens=30), metadata=key("tokens"))  # ~32 reserved, 32 used
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request(max_tokens=30), metadata=key("tokens"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tokens/s" in info.value.details()


async def test_models_and_priorities_outside_a_tenants_rights_are_denied(tenants_stack):
    stub = tenants_stack.router_stub()
    for req in (request("sim-other"), request(priority=types_pb2.PRIORITY_HIGH)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Infer(req, metadata=key("narrow"))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    low = await stub.Infer(
        request(max_tokens=1, priority=types_pb2.PRIORITY_LOW), metadata=key("narrow")
    )
    assert low.completion_tokens == 1


async def test_concurrent_streams_are_capped(tenants_stack):
    stub = tenants_stack.router_stub()
    call = stub.Generate(request(max_tokens=200), metadata=key("narrow"))
    assert (await call.read()).HasField("delta")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request(max_tokens=1), metadata=key("narrow"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    call.cancel()
    await asyncio.sleep(0.05)
    assert (await stub.Infer(request(max_tokens=1), metadata=key("narrow"))).completion_tokens


async def test_the_response_cache_answers_repeats_without_the_scheduler():
    stack = await start_stack(
        tenants=[tenant("a"), tenant("b")],
        allow_anonymous=False,
        router_overrides={"cache_max_entries": 10},
    )
    try:
        stub = stack.router_stub()
        first = await stub.Infer(request(prompt="same", max_tokens=5), metadata=key("a"))
        again = await stub.Infer(request(prompt="same", max_tokens=5), metadata=key("a"))
        assert again.generated_text == first.generated_text
        assert again.inference_time_ms == 0 and again.request_id != first.request_id
        registry = stack.router.metrics.registry
        assert registry.get_sample_value("inference_router_cache_hits_total") == 1
        waits = stack.scheduler.metrics.registry.get_sample_value(
            "inference_scheduler_queue_wait_seconds_count", {"priority": "medium"}
        )
        assert waits == 1  # the hit never reached the scheduler
        other = await stub.Infer(request(prompt="same", max_tokens=5), metadata=key("b"))
        assert other.inference_time_ms > 0  # tenant b never sees tenant a's entry
        assert registry.get_sample_value("inference_router_cache_misses_total") == 2
    finally:
        await stack.close()


async def test_an_answer_cut_short_by_degradation_is_not_cached():
    one_slot = sim_model("sim-slow", slots=1, step_ms=20.0)
    stack = await start_stack(
        [one_slot],
        tenants=[tenant("a")],
        allow_anonymous=False,
        router_overrides={"cache_max_entries": 10},
        low_max_tokens_cap=2,
        degrade_at=0.0001,  # with anything queued, low requests are capped
    )
    try:
        stub = stack.router_stub()
        core = stack.scheduler.coordinator.state
        blocker = asyncio.ensure_future(
            stub.Infer(request("sim-slow", max_tokens=20), metadata=key("a"))
        )
        await wait_until(lambda: core.active_leases() == 1)
        queued = asyncio.ensure_future(
            stub.Infer(request("sim-slow", max_tokens=1), metadata=key("a"))
        )
        await wait_until(lambda: core.queued() == 1)
        low = request("sim-slow", "same", max_tokens=8, priority=types_pb2.PRIORITY_LOW)
        capped = await stub.Infer(low, metadata=key("a"))
        assert capped.completion_tokens == 2  # degraded under load
        await asyncio.gather(blocker, queued)
        again = await stub.Infer(low, metadata=key("a"))
        assert again.completion_tokens == 8  # not the degraded answer from the cache
        third = await stub.Infer(low, metadata=key("a"))
        assert third.inference_time_ms == 0  # the full answer is cached
    finally:
        await stack.close()


async def test_request_ids_are_scoped_per_tenant_and_status_shows_a_tenant_its_own():
    slow = sim_model("sim-slow", slots=2, step_ms=20.0)
    stack = await start_stack(
        [slow],
        tenants=[tenant("a"), tenant("b"), tenant("ops", admin=True)],
        allow_anonymous=False,
    )
    try:
        stub = stack.router_stub()
        mine = stub.Generate(
            request("sim-slow", max_tokens=50, request_id="r-1"), metadata=key("a")
        )
        await mine.read()
        # the same id from another tenant neither collides nor learns of the first
        theirs = await stub.Infer(
            request("sim-slow", max_tokens=2, request_id="r-1"), metadata=key("b"), timeout=10
        )
        assert theirs.completion_tokens == 2
        view = await stub.GetStatus(types_pb2.GetStatusRequest(), metadata=key("b"))
        assert not view.workers and view.active_leases == 0  # not a's lease, no worker
        assert [m.model_id for m in view.models] == ["sim-slow"] and view.models[0].ready
        own = await stub.GetStatus(types_pb2.GetStatusRequest(), metadata=key("a"))
        assert own.active_leases == 1 and not own.workers
        fleet = await stub.GetStatus(types_pb2.GetStatusRequest(), metadata=key("ops"))
        assert len(fleet.workers) == 1 and fleet.workers[0].address
        mine.cancel()
    finally:
        await stack.close()
