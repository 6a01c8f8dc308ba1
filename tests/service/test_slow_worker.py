"""Issue 27, no false alarms: a worker that is merely slow (a prefill far longer than the
token path's ping timeout, its report unchanged meanwhile) is neither left by its router nor
suspected by the scheduler; its stream ends on it, never resumed."""

import asyncio
from dataclasses import replace

from services.common.catalog import GpuProfile, SimulationSpec
from services.common.server import TOKEN_PATH_KEEPALIVE_MS, TOKEN_PATH_PING_TIMEOUT_MS
from tests.stack import request, sim_model, start_stack

PREFILL_TOKENS_PER_S = 100.0
SLOW = replace(
    sim_model("sim-slow", slots=2),
    simulation=SimulationSpec(
        gpu_type="test", profiles={"test": GpuProfile(PREFILL_TOKENS_PER_S, 2.0, 0.02, 10**6)}
    ),
)


def lost_leases(stack) -> float:
    samples = [
        s.value
        for metric in stack.scheduler.metrics.registry.collect()
        if metric.name == "inference_scheduler_leases_lost"
        for s in metric.samples
        if s.name.endswith("_total")
    ]
    return sum(samples)


async def test_a_prefill_longer_than_the_ping_timeout_is_not_taken_for_a_dead_worker():
    stack = await start_stack([SLOW], workers=2, quiet_heartbeats=4)
    try:
        bound_s = (TOKEN_PATH_KEEPALIVE_MS + TOKEN_PATH_PING_TIMEOUT_MS) / 1000
        prompt = "word " * int(PREFILL_TOKENS_PER_S * (bound_s + 1.0) * 4 / 5)  # ~5 s of prefill
        call = stack.router_stub().Infer(request("sim-slow", prompt, max_tokens=4), timeout=30)
        answer = asyncio.ensure_future(call)
        suspected = []
        for _ in range(9):  # every half second through the prefill
            await asyncio.sleep(0.5)
            suspected += [
                r.worker_id for r in stack.scheduler.coordinator.state.workers() if r.suspect
            ]
        reply = await answer
        assert reply.generated_text and reply.completion_tokens == 4 and suspected == []
        assert lost_leases(stack) == 0  # its router never resubmitted it elsewhere
        assert reply.time_to_first_token_ms > bound_s * 1000  # silent past the ping timeout
    finally:
        await stack.close()
