"""The simulated engine: deterministic text, pacing by batch, admission by KV capacity."""

import asyncio
from dataclasses import replace

from services.common.catalog import GpuProfile, SimulationSpec
from services.gpu_worker.engines.base import Finished, GenerationInput, TextDelta
from services.gpu_worker.engines.simulated import SimulatedEngine
from tests.stack import sim_model


def engine_with(kv_capacity: int) -> SimulatedEngine:
    profile = GpuProfile(1e6, 2.0, 0.0, kv_capacity)
    spec = replace(sim_model(), simulation=SimulationSpec(gpu_type="t", profiles={"t": profile}))
    engine = SimulatedEngine(spec)
    engine.load()
    return engine


async def generate(engine: SimulatedEngine, prompt: str, max_tokens: int, log: list) -> str:
    done = asyncio.Event()
    texts = []

    def sink(event):
        if isinstance(event, TextDelta):
            texts.append(event.text)
        elif isinstance(event, Finished):
            log.append(prompt)
            done.set()

    engine.submit(GenerationInput(prompt, prompt, max_tokens), sink)
    await done.wait()
    return "".join(texts)


async def test_the_same_request_streams_the_same_text():
    engine = engine_with(10_000)
    log: list[str] = []
    first = await generate(engine, "Hello there", 12, log)
    again = await generate(engine, "Hello there", 12, log)
    assert first == again and len(first.split()) == 12
    engine.close()


async def test_kv_capacity_admits_sequences_one_batch_at_a_time():
    engine = engine_with(kv_capacity=30)  # each request needs ~3 + 20 tokens: one at a time
    log: list[str] = []
    tasks = [asyncio.create_task(generate(engine, p, 20, log)) for p in ("aaaa", "bbbb", "cccc")]
    await asyncio.sleep(0.01)
    assert len(engine._running) == 1 and engine.active_sequences() == 3
    await asyncio.gather(*tasks)
    assert log == ["aaaa", "bbbb", "cccc"]
    assert engine.active_sequences() == 0
    engine.close()
