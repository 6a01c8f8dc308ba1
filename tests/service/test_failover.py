"""Failover with resume, preemption, shedding and model placement through real servers.

The simulated model's text is a pure function of the prompt, so a stream that moved between
workers can be compared word for word with one that never moved.
"""

import asyncio

import grpc
import pytest
from inference.v1 import types_pb2

from services.common.catalog import SimulationSpec
from services.common.status import RETRY_AFTER_KEY
from tests.service.test_failures import kill_worker
from tests.service.test_scheduling import wait_until
from tests.stack import request, sim_model, start_stack

SLOW = sim_model("sim-slow", slots=2, step_ms=20.0)
ONE_SLOT = sim_model("sim-slow", slots=1, step_ms=20.0)
GIB = 1024**3


def text_of(messages: list[types_pb2.GenerateResponse]) -> str:
    return "".join(m.delta.text for m in messages if m.HasField("delta"))


async def read_n(call, n: int) -> list[types_pb2.GenerateResponse]:
    return [await call.read() for _ in range(n)]


async def read_rest(call) -> list[types_pb2.GenerateResponse]:
    out = []
    while (message := await call.read()) != grpc.aio.EOF:
        out.append(message)
    return out


def lost(stack, reason: str) -> float:
    value = stack.scheduler.metrics.registry.get_sample_value(
        "inference_scheduler_leases_lost_total", {"reason": reason}
    )
    return value or 0.0


async def test_a_stream_cut_by_a_dying_worker_resumes_on_another_without_repeats():
    stack = await start_stack([SLOW], workers=2)
    try:
        stub = stack.router_stub()
        prompt = "Tell me about failover"
        reference = [m async for m in stub.Generate(request("sim-slow", prompt, max_tokens=60))]
        call = stub.Generate(request("sim-slow", prompt, max_tokens=60))
        seen = await read_n(call, 6)
        [lease] = stack.scheduler.coordinator.state.leases()
        victim = next(w for w in stack.workers if w.worker_id == lease.worker_id)
        stack.workers.remove(victim)
        await kill_worker(victim)
        seen += await read_rest(call)
        assert text_of(seen) == text_of(reference)  # one stream, nothing repeated or lost
        summary = seen[-1].summary
        assert summary.completion_tokens == 60
        assert summary.worker_id != victim.worker_id
        assert sum(m.delta.token_count for m in seen if m.HasField("delta")) == 60
        assert lost(stack, "worker_lost") == 1
        core = stack.scheduler.coordinator.state
        await wait_until(lambda: core.active_leases() == 0 and len(core.workers()) == 1)
    finally:
        await stack.close()


async def test_a_high_request_preempts_a_low_stream_which_resumes_without_repeats():
    stack = await start_stack([ONE_SLOT])
    try:
        stub = stack.router_stub()
        prompt = "A long low-priority essay"
        low = request("sim-slow", prompt, max_tokens=40, priority=types_pb2.PRIORITY_LOW)
        reference = [m async for m in stub.Generate(low)]
        call = stub.Generate(low)
        seen = await read_n(call, 5)
        high = await stub.Infer(
            request("sim-slow", "urgent", max_tokens=5, priority=types_pb2.PRIORITY_HIGH)
        )
        assert high.completion_tokens == 5
        seen += await read_rest(call)
        assert text_of(seen) == text_of(reference)
        assert seen[-1].summary.completion_tokens == 40
        assert lost(stack, "preempted") == 1
    finally:
        await stack.close()


async def test_pressure_sheds_low_first_and_a_full_queue_evicts_low_for_high():
    stack = await start_stack([ONE_SLOT], queue_capacity=4, preemption=False)
    try:
        stub = stack.router_stub()
        core = stack.scheduler.coordinator.state

        def low(i):
            return request("sim-slow", f"low {i}", max_tokens=10, priority=types_pb2.PRIORITY_LOW)

        def high(i):
            return request("sim-slow", f"hi {i}", max_tokens=3, priority=types_pb2.PRIORITY_HIGH)

        calls = [asyncio.ensure_future(stub.Infer(low(0)))]
        await wait_until(lambda: core.active_leases() == 1)
        for i in (1, 2, 3):
            calls.append(asyncio.ensure_future(stub.Infer(low(i))))
            await wait_until(lambda i=i: core.queued() == i)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # 3 of 4 places: low sheds at 70%
            await stub.Infer(low(4))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(refused.value.trailing_metadata())[RETRY_AFTER_KEY]) > 0
        calls.append(asyncio.ensure_future(stub.Infer(high(0))))
        await wait_until(lambda: core.queued() == 4)
        calls.append(asyncio.ensure_future(stub.Infer(high(1))))  # full: evicts the newest low
        results = await asyncio.gather(*calls, return_exceptions=True)
        codes = [
            r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results
        ]
        assert (
            codes
            == [grpc.StatusCode.OK] * 3
            + [grpc.StatusCode.RESOURCE_EXHAUSTED]
            + [grpc.StatusCode.OK] * 2
        )
        assert "shed" in results[3].details()
        await wait_until(lambda: core.active_leases() == 0 and core.queued() == 0)
    finally:
        await stack.close()


async def test_demand_places_a_model_unloading_a_cold_one_for_room():
    sim = SimulationSpec(gpu_type="test", profiles=ONE_SLOT.simulation.profiles)
    a = ONE_SLOT.__class__(**{**ONE_SLOT.__dict__, "model_id": "sim-a", "simulation": sim})
    b = ONE_SLOT.__class__(**{**ONE_SLOT.__dict__, "model_id": "sim-b", "simulation": sim})
    stack = await start_stack([a, b], workers=0)
    try:
        worker = await stack.add_worker([a, b], models="sim-a", memory_budget_bytes=100 * GIB)
        assert set(worker.host.engines) == {"sim-a"}
        stub = stack.router_stub()
        answer = await stub.Infer(request("sim-b", max_tokens=3), timeout=10)
        assert answer.model_id == "sim-b"
        assert set(worker.host.engines) == {"sim-b"}  # 70 GiB each: a went to make room
        again = await stub.Infer(request("sim-a", max_tokens=3), timeout=10)
        assert again.completion_tokens == 3
        assert set(worker.host.engines) == {"sim-a"}
    finally:
        await stack.close()


async def test_a_cancelled_queued_request_leaves_the_queue_at_once():
    stack = await start_stack([ONE_SLOT])
    try:
        stub = stack.router_stub()
        core = stack.scheduler.coordinator.state
        running = stub.Generate(request("sim-slow", max_tokens=100))
        await running.read()
        waiting = stub.Generate(request("sim-slow", "second", max_tokens=5))
        await wait_until(lambda: core.queued() == 1)
        waiting.cancel()
        await wait_until(lambda: core.queued() == 0)
        running.cancel()
        await wait_until(lambda: core.active_leases() == 0)
        await wait_until(lambda: stack.workers[0].host.active_sequences() == 0)
    finally:
        await stack.close()
