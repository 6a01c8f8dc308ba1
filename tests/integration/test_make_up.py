"""`make up` as a user runs it (scripts/up.sh), with two fixed workers serving a simulated
model: kill -9 of one worker while streams run leaves the system serving, that worker's streams
resume on the other one, and the supervisor starts the killed worker again."""

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import grpc
import pytest
from inference.v1 import router_pb2_grpc, types_pb2

from bench.local_system import consecutive_free_ports, free_port, start_make_up
from bench.sim_cluster import MODEL_ID, sim_config

pytestmark = pytest.mark.slow


def pid_of(run_dir: Path, name: str) -> int:
    return int((run_dir / f"{name}.pid").read_text())


async def stream(stub, prompt: str) -> str:
    request = types_pb2.GenerateRequest(model_id=MODEL_ID, prompt=prompt, max_tokens=80)
    texts = [m.delta.text async for m in stub.Generate(request, timeout=60) if m.HasField("delta")]
    return "".join(texts)


async def ready_workers(stub) -> int:
    models = await stub.ListModels(types_pb2.ListModelsRequest(), timeout=5)
    return next(m.ready_workers for m in models.models if m.model_id == MODEL_ID)


@pytest.fixture
def make_up(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(sim_config(slots=4, step_ms=25.0, flush_ms=0.0))
    router, scheduler = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "WORKERS": "2",
        "CONFIG": str(config),
        "RUN_DIR": str(tmp_path / "run"),
        "WORKER_BASE_PORT": str(consecutive_free_ports(2)),
        "WORKER_METRICS_BASE_PORT": str(consecutive_free_ports(2)),
        "ROUTER_LISTEN": router,
        "ROUTER_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        "ROUTER_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "ROUTER_SCHEDULER_ADDRESS": scheduler,
        "SCHEDULER_LISTEN": scheduler,
        "SCHEDULER_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "WORKER_SCHEDULER_ADDRESS": scheduler,
    }
    up = start_make_up(env, tmp_path / "up.log")
    yield up, router, tmp_path / "run"
    os.killpg(up.pid, signal.SIGTERM)
    try:
        up.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)


async def test_kill_9_of_a_worker_under_make_up_keeps_the_system_serving(make_up):
    up, router, run_dir = make_up
    async with grpc.aio.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while True:
            assert up.poll() is None, "make up exited"
            try:
                if await ready_workers(stub) == 2:
                    break
            except grpc.aio.AioRpcError:
                pass
            assert loop.time() < deadline, "make up never got ready"
            await asyncio.sleep(0.2)
        others = {name: pid_of(run_dir, name) for name in ("scheduler", "router", "worker-1")}
        victim = pid_of(run_dir, "worker-0")
        prompts = [f"make up prompt {i}" for i in range(8)]
        reference = await asyncio.gather(*(stream(stub, p) for p in prompts))
        running = [asyncio.ensure_future(stream(stub, p)) for p in prompts]
        await asyncio.sleep(0.7)  # about a third of each stream is out, on both workers
        os.kill(victim, signal.SIGKILL)
        assert await asyncio.gather(*running) == reference  # resumed, nothing lost or repeated
        assert await stub.Infer(
            types_pb2.GenerateRequest(model_id=MODEL_ID, prompt="still there?", max_tokens=3),
            timeout=30,
        )
        while await ready_workers(stub) < 2:  # the supervisor started worker-0 again
            assert loop.time() < deadline + 60
            await asyncio.sleep(0.2)
    assert pid_of(run_dir, "worker-0") != victim
    assert {name: pid_of(run_dir, name) for name in others} == others  # nobody else restarted
    assert up.poll() is None
