"""Autoscaling through real servers: scale from zero, desired counts in GetStatus and the
metric, and a graceful drain that fails no request."""

import asyncio
from dataclasses import replace

import grpc
from inference.v1 import types_pb2

from services.scheduler.core.types import WorkerState
from tests.service.test_failover import lost
from tests.service.test_scheduling import wait_until
from tests.stack import request, sim_model, start_stack

SCALABLE = replace(sim_model("sim-zero", slots=2, step_ms=20.0), min_workers=0, max_workers=2)


async def test_scaled_to_zero_a_request_waits_for_a_worker_or_gets_unavailable_in_time():
    stack = await start_stack([SCALABLE], workers=0, autoscaling=True)
    try:
        stub = stack.router_stub()
        try:
            await stub.Infer(request("sim-zero", max_tokens=3), timeout=2.0)
            raise AssertionError("no worker was started: the request cannot succeed")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert "started in time" in exc.details()  # told before its 2 s deadline
        waiting = asyncio.ensure_future(stub.Infer(request("sim-zero", max_tokens=3), timeout=20))
        status = stack.scheduler_stub()
        await wait_until(lambda: stack.scheduler.coordinator.state.queued() == 1)
        await wait_until(lambda: _desired(stack) == 1)
        answer = await status.GetStatus(types_pb2.GetStatusRequest(), timeout=5)
        [scaling] = answer.scaling
        assert (scaling.model_id, scaling.current_workers, scaling.desired_workers) == (
            "sim-zero",
            0,
            1,
        )
        assert (scaling.min_workers, scaling.max_workers) == (0, 2)
        await stack.add_worker([SCALABLE])  # what the actuator does
        assert (await waiting).completion_tokens == 3
        metric = stack.scheduler.metrics.registry.get_sample_value(
            "inference_scheduler_desired_workers", {"model": "sim-zero"}
        )
        assert metric == 1.0
    finally:
        await stack.close()


async def reference_then_running(stack, prompt: str, tokens: int):
    """An uninterrupted answer to `prompt`, then the same request again, running (leased)."""
    stub = stack.router_stub()
    reference = await stub.Infer(request("sim-zero", prompt, max_tokens=tokens), timeout=10)
    running = asyncio.ensure_future(
        stub.Infer(request("sim-zero", prompt, max_tokens=tokens), timeout=20)
    )
    await wait_until(lambda: stack.scheduler.coordinator.state.active_leases() == 1)
    return reference, running


def _state(core, worker_id: str) -> WorkerState | None:
    return next((w.state for w in core.workers() if w.worker_id == worker_id), None)


def _desired(stack) -> int:
    decision = stack.scheduler.coordinator.state.decisions.get("sim-zero")
    return decision.desired if decision else -1


async def test_without_autoscaling_a_model_with_no_worker_is_unavailable_at_once():
    stack = await start_stack([SCALABLE], workers=0)
    try:
        stub = stack.router_stub()
        try:
            await stub.Infer(request("sim-zero", max_tokens=3), timeout=5)
            raise AssertionError("expected UNAVAILABLE")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await stack.close()


async def test_a_draining_worker_finishes_its_streams_and_takes_no_new_lease():
    stack = await start_stack([SCALABLE], workers=2, autoscaling=True)
    try:
        stub = stack.router_stub()
        core = stack.scheduler.coordinator.state
        reference, running = await reference_then_running(stack, "drain me gently", 40)
        [lease] = core.leases()
        leaving = next(w for w in stack.workers if w.worker_id == lease.worker_id)
        stack.workers.remove(leaving)
        stopping = asyncio.ensure_future(leaving.stop())  # what SIGTERM runs
        await wait_until(lambda: _state(core, leaving.worker_id) is WorkerState.DRAINING)
        during = [m async for m in stub.Generate(request("sim-zero", "meanwhile", max_tokens=3))]
        assert during[-1].summary.completion_tokens == 3
        assert during[-1].summary.worker_id != leaving.worker_id  # no lease on a draining one
        finished = await running
        assert finished.generated_text == reference.generated_text  # not resumed: finished
        await stopping
        await wait_until(lambda: len(core.workers()) == 1)
        assert lost(stack, "worker_lost") == 0
    finally:
        await stack.close()


async def test_a_stream_longer_than_the_drain_grace_is_handed_over_not_failed():
    stack = await start_stack([SCALABLE], workers=0, autoscaling=True)
    try:
        leaving = await stack.add_worker([SCALABLE], shutdown_grace_s=0.3)
        reference, running = await reference_then_running(stack, "a long answer", 60)
        await stack.add_worker([SCALABLE])  # where the stream can go
        stack.workers.remove(leaving)
        await leaving.stop()  # 60 tokens × 20 ms outlast the 0.3 s grace
        finished = await running
        assert finished.generated_text == reference.generated_text  # resumed, nothing repeated
        assert finished.completion_tokens == 60
    finally:
        await stack.close()
