"""Prefix caching across the services: the router names a prompt's blocks, workers report
what they cache, the scheduler sends a prompt where its start is cached; and the index comes
back after a scheduler restart and leaves with a worker."""

import asyncio
from pathlib import Path

import grpc
import pytest
from inference.v1 import scheduler_pb2, types_pb2

from services.common.prefix_blocks import BLOCK_TOKENS, MAX_TICKET_BLOCKS
from services.router.prompt_blocks import PromptBlocks
from services.scheduler.config import with_overrides
from services.scheduler.server import SchedulerServer
from tests.service.test_scheduling import wait_until
from tests.stack import request, sim_model, start_stack

MODEL = sim_model("sim-cache", slots=8)
SYSTEM = "You are the assistant of a bakery in Lyon; answer briefly. " * 40  # ~600 tokens


@pytest.fixture
async def stack():
    stack = await start_stack([MODEL], workers=2)
    yield stack
    await stack.close()


async def ask(stack, question: str) -> tuple[str, int]:
    """(worker, cached prompt tokens) of one request."""
    answer = await stack.router_stub().Infer(
        request("sim-cache", SYSTEM + question, max_tokens=2), timeout=10
    )
    return answer.worker_id, answer.cached_prompt_tokens


def indexed(stack, worker_id: str) -> int:
    return stack.scheduler.coordinator.state.cached_blocks(worker_id, "sim-cache")


async def test_a_shared_prefix_is_prefilled_once_and_followed_by_its_requests(stack):
    holder, cached = await ask(stack, "When do you open?")
    assert cached == 0
    await wait_until(lambda: indexed(stack, holder) > 30)  # the next heartbeat told it
    for question in ("Any croissants?", "Gluten free?", "Where are you?"):
        worker, cached = await ask(stack, question)
        assert worker == holder and cached >= len(SYSTEM) // 4 - BLOCK_TOKENS
    hits = 0
    for _ in range(50):  # the status view shows the worker's last heartbeat (cached 1 s)
        status = await stack.router_stub().GetStatus(types_pb2.GetStatusRequest())
        [model] = [m for w in status.workers if w.worker_id == holder for m in w.models]
        hits = model.prefix_cache_hits
        if hits >= 3 * (len(SYSTEM) // 4 - BLOCK_TOKENS):
            break
        await asyncio.sleep(0.1)
    assert hits >= 3 * (len(SYSTEM) // 4 - BLOCK_TOKENS)
    assert model.prefix_cache_blocks == indexed(stack, holder) > 30  # the index, in GetStatus


async def test_a_restarted_scheduler_hears_the_caches_again_and_a_gone_worker_takes_its_own(
    stack,
):
    holder, _ = await ask(stack, "When do you open?")
    old = stack.scheduler
    await old.stop(0)
    config = with_overrides(old.config, listen=stack.scheduler_address)
    stack.scheduler = SchedulerServer(config)
    await stack.scheduler.start()
    await stack.wait_workers(2)
    await wait_until(lambda: indexed(stack, holder) > 30)  # from the registration
    assert (await ask(stack, "Any croissants?"))[0] == holder
    [gone] = [w for w in stack.workers if w.worker_id == holder]
    await gone.stop()
    stack.workers.remove(gone)
    await wait_until(lambda: len(stack.scheduler.coordinator.state.workers()) == 1)
    assert indexed(stack, holder) == 0
    other, cached = await ask(stack, "Gluten free?")
    assert other != holder and cached == 0


async def test_a_ticket_with_too_many_blocks_is_invalid_and_a_huge_prompt_costs_a_bounded_one(
    stack,
):
    ticket = scheduler_pb2.AcquireRequest(
        request_id="r", model_id="sim-cache", prefix_blocks=range(MAX_TICKET_BLOCKS + 1)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.scheduler_stub().Acquire(ticket, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prefix_blocks" in info.value.details()
    hostile = "a" * 30_000  # 7,500 identical "tokens", past the model's context
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.router_stub().Infer(request("sim-cache", hostile), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_router_names_at_most_the_bound_of_a_huge_prompts_blocks():
    blocks = PromptBlocks({"sim-cache": MODEL}, Path("/nonexistent"))
    ticket = scheduler_pb2.AcquireRequest(prompt_tokens=1)
    blocks.describe(ticket, request("sim-cache", "a" * 400_000))  # 100,000 identical tokens
    assert len(ticket.prefix_blocks) == MAX_TICKET_BLOCKS and ticket.prompt_tokens == 100_000
    unknown = scheduler_pb2.AcquireRequest(prompt_tokens=1)
    blocks.describe(unknown, request("no-such-model", "hello"))
    assert not unknown.prefix_blocks and unknown.prompt_tokens == 1
