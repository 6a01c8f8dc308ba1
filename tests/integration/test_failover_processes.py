"""kill -9 of a worker process mid-stream: its streams resume on another worker process."""

import asyncio
import time
import urllib.request

import grpc
import pytest
from inference.v1 import router_pb2_grpc, scheduler_pb2_grpc, types_pb2

from bench.sim_cluster import MODEL_ID, sim_cluster

pytestmark = pytest.mark.slow


def lost_leases(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = next(
        line
        for line in body.splitlines()
        if line.startswith('inference_scheduler_leases_lost_total{reason="worker_lost"}')
    )
    return float(line.split()[-1])


async def stream(stub, prompt: str) -> tuple[str, types_pb2.GenerationSummary]:
    text, summary = [], None
    async for message in stub.Generate(
        types_pb2.GenerateRequest(model_id=MODEL_ID, prompt=prompt, max_tokens=80), timeout=60
    ):
        if message.HasField("delta"):
            text.append(message.delta.text)
        else:
            summary = message.summary
    return "".join(text), summary


async def test_kill_9_of_a_worker_mid_stream_loses_no_request(tmp_path):
    cluster = sim_cluster(tmp_path, workers=2, slots=8, step_ms=25.0)
    cluster.start(ready_timeout_s=120)
    try:
        async with grpc.aio.insecure_channel(cluster.router_address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            prompts = [f"prompt number {i}" for i in range(6)]
            reference = await asyncio.gather(*(stream(stub, p) for p in prompts))
            running = [asyncio.ensure_future(stream(stub, p)) for p in prompts]
            await asyncio.sleep(0.8)  # about a third of each stream is out
            cluster.procs["worker-0"].kill()
            killed_at = time.monotonic()
            results = await asyncio.gather(*running)
        for (text, summary), (ref_text, _) in zip(results, reference, strict=True):
            assert text == ref_text  # one stream, no token repeated or lost
            assert summary.completion_tokens == 80
        scheduler = f"127.0.0.1:{cluster.ports['scheduler']}"
        async with grpc.aio.insecure_channel(scheduler) as channel:
            # the dead worker takes no lease from its session's end, and is dropped once its
            # heartbeats are missed (a worker cut off only for a moment would be back first)
            while True:
                status = await scheduler_pb2_grpc.SchedulerStub(channel).GetStatus(
                    types_pb2.GetStatusRequest(), timeout=5
                )
                if len(status.workers) == 1 or time.monotonic() - killed_at > 30:
                    break
                await asyncio.sleep(0.2)
        assert len(status.workers) == 1 and status.active_leases == 0
        assert time.monotonic() - killed_at < 30
        survivor = status.workers[0].worker_id
        assert all(summary.worker_id == survivor for _, summary in results)
        assert lost_leases(cluster.metrics_ports["scheduler"]) >= 1  # some streams did move
    finally:
        cluster.kill()
