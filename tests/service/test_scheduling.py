"""Queueing, priorities, deadlines, cancellation and admission through real servers."""

import asyncio

import grpc
import pytest
from inference.v1 import scheduler_pb2, types_pb2

from services.common.status import RETRY_AFTER_KEY
from tests.service.conftest import SLOW
from tests.stack import request, start_stack


async def wait_until(predicate, timeout_s=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


def queued(stack) -> int:
    return sum(stack.scheduler.coordinator.state.queue_depths().values())


async def test_waiting_requests_are_served_high_then_medium_then_low(one_slot):
    stub = one_slot.router_stub()
    blocker = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=10)))
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 1)
    finished: list[str] = []

    async def run(name, priority):
        await stub.Infer(request("sim-slow", max_tokens=2, priority=priority))
        finished.append(name)

    tasks = []
    for count, (name, priority) in enumerate([("low", 3), ("medium", 2), ("high", 1)], 1):
        tasks.append(asyncio.create_task(run(name, priority)))
        await wait_until(lambda n=count: queued(one_slot) == n)
    await asyncio.gather(blocker, *tasks)
    assert finished == ["high", "medium", "low"]


async def test_deadline_passing_in_the_queue_is_deadline_exceeded(one_slot):
    stub = one_slot.router_stub()
    blocker = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=30)))
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request("sim-slow", max_tokens=2), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: queued(one_slot) == 0)
    await blocker


async def test_full_queue_is_resource_exhausted_with_retry_after(one_slot):
    stub = one_slot.router_stub()
    calls = [asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=20)))]
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 1)
    calls += [
        asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=1))) for _ in range(3)
    ]
    await wait_until(lambda: queued(one_slot) == 3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request("sim-slow", max_tokens=1))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(info.value.trailing_metadata())[RETRY_AFTER_KEY]) > 0
    await asyncio.gather(*calls)


async def test_client_cancel_stops_the_work_on_the_worker_and_frees_the_lease(one_slot):
    stub = one_slot.router_stub()
    call = stub.Generate(request("sim-slow", max_tokens=200))
    first = await call.read()
    assert first.HasField("delta")
    engine = one_slot.workers[0].host.engines["sim-slow"]
    assert engine.active_sequences() == 1
    call.cancel()
    await wait_until(lambda: engine.active_sequences() == 0)
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 0)
    # the slot is usable again at once
    answer = await stub.Infer(request("sim-slow", max_tokens=2), timeout=5)
    assert answer.completion_tokens == 2


async def test_concurrent_streams_all_complete_and_every_lease_is_freed(stack):
    stub = stack.router_stub()
    answers = await asyncio.gather(
        *[stub.Infer(request(prompt=f"p{i}", max_tokens=8)) for i in range(20)]
    )
    assert all(a.completion_tokens == 8 for a in answers)
    # each lease ends when its worker reports it, just after the stream
    await wait_until(lambda: stack.scheduler.coordinator.state.active_leases() == 0)


async def test_priority_unspecified_means_medium(one_slot):
    answer = await one_slot.router_stub().Infer(
        request("sim-slow", max_tokens=1, priority=types_pb2.PRIORITY_UNSPECIFIED)
    )
    assert answer.completion_tokens == 1


async def test_a_deadline_passing_mid_stream_ends_it_and_stops_the_work(one_slot):
    stub = one_slot.router_stub()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request("sim-slow", max_tokens=200), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    engine = one_slot.workers[0].host.engines["sim-slow"]
    await wait_until(lambda: engine.active_sequences() == 0)
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 0)


async def test_a_duplicate_queued_request_id_is_invalid(one_slot):
    stub = one_slot.router_stub()
    blocker = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=20)))
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 1)
    first = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=1, request_id="dup")))
    await wait_until(lambda: queued(one_slot) == 1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request("sim-slow", max_tokens=1, request_id="dup"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await asyncio.gather(blocker, first)


async def test_a_router_keeps_at_most_its_cap_of_requests_waiting_for_a_lease():
    # a cap of 3: medium and low requests may take 2 of it, high ones all 3
    stack = await start_stack([SLOW], router_overrides={"max_waiting_per_scheduler": 3})
    try:
        stub = stack.router_stub()
        running = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=20)))
        await wait_until(lambda: stack.scheduler.coordinator.state.active_leases() == 1)
        waiting = [
            asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=1))) for _ in range(2)
        ]
        await wait_until(lambda: queued(stack) == 2)
        with pytest.raises(grpc.aio.AioRpcError) as info:  # a third medium would wait: refused
            await stub.Infer(request("sim-slow", max_tokens=1))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "waiting for a lease" in info.value.details()
        assert int(dict(info.value.trailing_metadata())[RETRY_AFTER_KEY]) > 0
        high = request("sim-slow", max_tokens=1, priority=types_pb2.PRIORITY_HIGH)
        waiting.append(asyncio.ensure_future(stub.Infer(high)))  # the reserve takes it
        await asyncio.gather(running, *waiting)
        answer = await stub.Infer(request("sim-slow", max_tokens=1))  # room again
        assert answer.completion_tokens == 1
    finally:
        await stack.close()


async def test_a_routers_retry_of_a_lost_acquire_takes_over_the_waiting_request(one_slot):
    """The router lost its Acquire call ambiguously and resubmits while the first call still
    waits on the scheduler: the retry waits for the same queued request (no 'already
    queued'), and the first call's end does not withdraw it."""
    stub = one_slot.router_stub()
    blocker = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=100)))
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 1)
    scheduler = one_slot.scheduler_stub()
    ticket = scheduler_pb2.AcquireRequest(
        request_id="lost-once", model_id="sim-slow", tenant_id="anonymous", max_tokens=1
    )
    first = asyncio.ensure_future(scheduler.Acquire(ticket, timeout=30))
    await wait_until(lambda: queued(one_slot) == 1)
    retry = scheduler_pb2.AcquireRequest()
    retry.CopyFrom(ticket)
    retry.resubmission.waited_ms = 150.0  # what the router's retry sends
    second = asyncio.ensure_future(scheduler.Acquire(retry, timeout=30))
    await asyncio.sleep(0.2)
    first.cancel()  # the first call's connection is gone
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.sleep(0.2)
    assert queued(one_slot) == 1  # still waiting (the blocker runs 2 s), for the retry
    grant = await second  # withdrawn, it would have ended CANCELLED
    assert grant.lease_id and grant.model_id == "sim-slow"
    await blocker
