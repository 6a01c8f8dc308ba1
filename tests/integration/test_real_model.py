"""The transformers engine with the real SmolLM2-135M on the CPU."""

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from inference.v1 import scheduler_pb2, types_pb2

from services.common.config import read_toml
from services.common.errors import InvalidArgument, Unavailable
from services.common.prefix_blocks import BLOCK_TOKENS
from services.gpu_worker import config as worker_config
from services.gpu_worker.engines.base import (
    Finished,
    FinishReason,
    GenerationInput,
    SamplingOptions,
)
from services.gpu_worker.engines.text import IncrementalDetokenizer
from services.gpu_worker.engines.transformers_engine import TransformersEngine
from services.router.prompt_blocks import PromptBlocks

pytestmark = pytest.mark.slow

CACHE = Path(".cache/models")


@pytest.fixture(scope="module")
def engine():
    config = worker_config.load(read_toml("deploy/local/config.toml"), {}, {})
    engine = TransformersEngine(config.catalog["smollm2-135m"], CACHE, "cpu")
    engine.load()
    yield engine
    engine.close()


def run(engine, prompt, max_tokens=24, **sampling):
    """Runs one sequence to the end; returns (deltas, final event)."""
    done = threading.Event()
    events = []

    def sink(event):
        events.append(event)
        if not hasattr(event, "text"):
            done.set()

    engine.submit(GenerationInput("t", prompt, max_tokens, SamplingOptions(**sampling)), sink)
    assert done.wait(120), "engine did not finish"
    return [e for e in events if hasattr(e, "text")], events[-1]


def text_of(deltas):
    return "".join(d.text for d in deltas)


def test_greedy_answer_is_real_and_stops_on_eos(engine):
    deltas, final = run(engine, "What is the capital of France?", max_tokens=40)
    assert isinstance(final, Finished) and final.reason is FinishReason.STOP
    assert "Paris" in text_of(deltas)
    assert deltas[0].prompt_tokens == final.prompt_tokens > 0  # announced with the first
    assert final.completion_tokens == sum(d.token_count for d in deltas) < 40
    again, _ = run(engine, "What is the capital of France?", max_tokens=40)
    assert text_of(again) == text_of(deltas)


def test_ignore_eos_and_min_tokens_hold_the_end_of_sequence_back(engine):
    _, natural = run(engine, "What is the capital of France?", max_tokens=60)
    assert natural.reason is FinishReason.STOP and natural.completion_tokens < 50
    _, forced = run(engine, "What is the capital of France?", max_tokens=60, ignore_eos=True)
    assert forced.reason is FinishReason.LENGTH and forced.completion_tokens == 60
    _, longer = run(engine, "What is the capital of France?", max_tokens=60, min_tokens=50)
    assert longer.completion_tokens >= 50


def test_max_tokens_bounds_the_output(engine):
    _, final = run(engine, "Write a long story about a dragon.", max_tokens=5)
    assert final.reason is FinishReason.LENGTH and final.completion_tokens == 5


def test_seeded_sampling_is_reproducible(engine):
    a, _ = run(engine, "Tell me a joke.", max_tokens=16, temperature=0.9, top_p=0.95, seed=7)
    b, _ = run(engine, "Tell me a joke.", max_tokens=16, temperature=0.9, top_p=0.95, seed=7)
    assert text_of(a) == text_of(b)


def test_stop_string(engine):
    full, _ = run(engine, "Count from 1 to 10, separated by commas.", max_tokens=30)
    assert "4" in text_of(full)
    cut, final = run(engine, "Count from 1 to 10, separated by commas.", max_tokens=30, stop=("4",))
    assert final.reason is FinishReason.STOP and "4" not in text_of(cut)
    assert text_of(full).startswith(text_of(cut))


def test_a_prompt_beyond_the_context_is_invalid(engine):
    _, final = run(engine, "word " * 3000, max_tokens=10)
    assert isinstance(final, InvalidArgument)


def test_incremental_detokenization_matches_the_tokenizer(engine):
    tokenizer = engine._tokenizer
    text = "Grüße aus Köln! 東京 🚀 naïve — «quotes»\n  indented"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)


def test_requests_joining_and_leaving_a_running_batch_match_decoding_alone(engine):
    """Staggered arrivals and different lengths: rows join mid-batch and leave as they end."""
    cases = [
        ("What is the capital of France?", 24, 0.0),
        ("Name three colors.", 8, 0.0),
        ("Write a haiku about the sea.", 30, 0.25),
        ("Explain gravity in one sentence.", 12, 0.5),
        ("Count to five.", 20, 0.8),
        ("Hello", 6, 1.1),
    ]
    alone = {prompt: text_of(run(engine, prompt, n)[0]) for prompt, n, _ in cases}
    together: dict[str, str] = {}

    def go(prompt: str, n: int, delay: float) -> None:
        time.sleep(delay)
        together[prompt] = text_of(run(engine, prompt, n)[0])

    threads = [threading.Thread(target=go, args=case) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert together == alone
    # the engine thread books the end of the step just after the last Finished event
    deadline = time.monotonic() + 5
    while (engine.active_sequences() or engine.stats().kv_tokens_used) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert engine.active_sequences() == 0
    assert engine.stats().kv_tokens_used == 0


def test_cancelled_rows_leave_the_batch(engine):
    done = threading.Event()
    events = []
    handle = engine.submit(
        GenerationInput("c", "Write a long story.", 200),
        lambda e: (events.append(e), done.set() if not hasattr(e, "text") else None),
    )
    while len(events) < 3:
        time.sleep(0.01)
    handle.cancel()
    deadline = time.monotonic() + 10
    while engine.active_sequences() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.active_sequences() == 0
    assert not done.is_set()  # a cancelled sequence ends silently: the caller went away


SYSTEM = "You answer questions about a small bakery in Lyon, briefly and politely. " * 12


def test_prefix_caching_changes_nothing_but_speed(engine):
    """The same prompts, concurrently and one by one, with the cache on (a long shared start:
    the second and later prompts reuse its blocks) and off: the same greedy text."""
    plain = TransformersEngine(replace(engine.spec, prefix_cache_tokens=0), CACHE, "cpu")
    plain.load()
    try:
        prompts = [
            SYSTEM + q for q in ("When do you open?", "Any croissants?", "When do you open?")
        ]
        cached_runs = [run(engine, p, 16) for p in prompts]
        together: dict[int, str] = {}
        threads = [
            threading.Thread(
                target=lambda i=i: together.update({i: text_of(run(engine, prompts[i], 16)[0])})
            )
            for i in range(len(prompts))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        uncached = [text_of(run(plain, p, 16)[0]) for p in prompts]
    finally:
        plain.close()
    assert [text_of(deltas) for deltas, _ in cached_runs] == uncached
    assert [together[i] for i in range(len(prompts))] == uncached
    finals = [final for _, final in cached_runs]
    assert finals[1].cached_prompt_tokens >= 160  # the shared start came from the cache
    assert finals[2].cached_prompt_tokens >= finals[2].prompt_tokens - BLOCK_TOKENS
    assert plain.prefix_cache.hit_tokens == 0 and engine.prefix_cache.hit_tokens > 0
    assert engine.stats().prefix_cache_hits == engine.prefix_cache.hit_tokens


def test_the_prefix_cache_stays_in_its_budget_and_reports_what_it_evicts(engine):
    small = TransformersEngine(
        replace(engine.spec, prefix_cache_tokens=4 * BLOCK_TOKENS), CACHE, "cpu"
    )
    small.load()
    try:
        for topic in ("bread", "cake", "tea"):
            run(small, f"Tell me about {topic}. " * 20, 2)
            assert len(small.prefix_cache) <= 4
        events = small.prefix_cache.take_events()  # net changes since it started: what it holds
        assert set(small.prefix_cache.held()) == set(events.stored) and not events.removed
        assert small.prefix_cache.hit_tokens >= BLOCK_TOKENS  # the chat template's start
    finally:
        small.close()


def test_a_failing_batched_prefill_is_retried_alone_and_completes(engine, monkeypatch):
    def broken(joining):
        raise ValueError("a bug in the batched path")

    monkeypatch.setattr(engine, "_prefill", broken)
    text, final = run(engine, "Hello", max_tokens=4)
    assert isinstance(final, Finished) and final.completion_tokens == 4 and text
    assert engine.healthy


def test_a_device_fault_in_prefill_ends_its_requests_with_an_error(engine, monkeypatch):
    def broken(joining):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine, "_prefill", broken)
    try:
        _, final = run(engine, "Hello", max_tokens=4)
        assert isinstance(final, Unavailable)  # the caller hears of it; nothing hangs
        assert not engine.healthy
        deadline = time.monotonic() + 5
        while engine.active_sequences() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active_sequences() == 0
    finally:
        engine.healthy = True  # the fault was injected; the module's engine serves on


def test_the_router_names_the_blocks_the_engine_caches(engine):
    """The router tokenizes as the worker does: the chain in its ticket is what the engine
    stores for the prompt, so the scheduler's index matches tickets to workers."""
    blocks = PromptBlocks({engine.spec.model_id: engine.spec}, CACHE)
    ticket = scheduler_pb2.AcquireRequest()
    prompt = types_pb2.GenerateRequest(model_id=engine.spec.model_id, prompt=SYSTEM + "Bye?")
    deadline = time.monotonic() + 60
    while not ticket.prefix_blocks and time.monotonic() < deadline:  # its tokenizer loads
        blocks.describe(ticket, prompt)
        time.sleep(0.05)
    _, final = run(engine, prompt.prompt, 2)
    assert ticket.prompt_tokens == final.prompt_tokens
    assert len(ticket.prefix_blocks) == final.prompt_tokens // BLOCK_TOKENS
    assert set(ticket.prefix_blocks) <= set(engine.prefix_cache.held())
