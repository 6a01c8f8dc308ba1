"""kill -9 of the scheduler process: running streams go on (they do not pass through it), the
restarted scheduler rebuilds its lease table from the workers, and the requests that were
waiting in its queue are resubmitted by the router and served."""

import asyncio

import grpc
import pytest
from inference.v1 import router_pb2_grpc, scheduler_pb2_grpc, types_pb2

from bench.sim_cluster import MODEL_ID, sim_cluster

pytestmark = pytest.mark.slow

SLOTS, WORKERS = 2, 2
RUNNING = SLOTS * WORKERS


async def stream(stub, prompt: str, tokens: int) -> tuple[str, types_pb2.GenerationSummary]:
    text, summary = [], None
    request = types_pb2.GenerateRequest(model_id=MODEL_ID, prompt=prompt, max_tokens=tokens)
    async for message in stub.Generate(request, timeout=60):
        if message.HasField("delta"):
            text.append(message.delta.text)
        else:
            summary = message.summary
    return "".join(text), summary


async def status(address: str) -> types_pb2.GetStatusResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        return await stub.GetStatus(types_pb2.GetStatusRequest(), timeout=2)


async def wait_for(predicate, address: str, timeout_s: float = 20.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            seen = await status(address)
            if predicate(seen):
                return seen
        except grpc.aio.AioRpcError:
            pass  # not up yet
        await asyncio.sleep(0.05)
    raise TimeoutError("the scheduler never showed the expected state")


async def test_kill_9_of_the_scheduler_loses_no_request(tmp_path):
    cluster = sim_cluster(tmp_path, workers=WORKERS, slots=SLOTS, step_ms=25.0)
    cluster.start(ready_timeout_s=120)
    scheduler = f"127.0.0.1:{cluster.ports['scheduler']}"
    try:
        async with grpc.aio.insecure_channel(cluster.router_address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            prompts = [f"crash prompt {i}" for i in range(2 * RUNNING)]
            reference = await asyncio.gather(*(stream(stub, p, 120) for p in prompts))
            running = [asyncio.ensure_future(stream(stub, p, 120)) for p in prompts]
            # every slot streams, the other half of the requests waits in the queue
            await wait_for(lambda s: s.active_leases == RUNNING, scheduler)
            cluster.procs["scheduler"].kill()
            cluster.procs["scheduler"].wait()
            await asyncio.sleep(0.5)
            assert not any(call.done() for call in running)  # nobody was failed meanwhile
            cluster.restart("scheduler")
            # the new scheduler learns the running leases from the workers' registrations
            rebuilt = await wait_for(lambda s: s.active_leases == RUNNING, scheduler)
            assert len(rebuilt.workers) == WORKERS
            results = await asyncio.gather(*running)
        for (text, summary), (ref_text, _) in zip(results, reference, strict=True):
            assert text == ref_text  # identical to an undisturbed run
            assert summary.completion_tokens == 120
        # every lease granted before and after the crash ended, and the new scheduler knows
        await wait_for(
            lambda s: s.active_leases == 0 and not any(q.depth for q in s.queues), scheduler
        )
    finally:
        cluster.kill()
