"""A fault stays in the sequence that caused it: the real transformers engine, on a tiny
randomly initialised Llama, with a model that fails on one token (as an input-dependent bug
would). The other sequences of the batch finish with the text they would have had alone, and
the engine stays healthy; a fault of the device makes it unhealthy."""

import threading
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from services.common.catalog import ModelSpec
from services.common.errors import InvalidArgument, Unavailable
from services.gpu_worker.engines.base import Finished, GenerationInput, SamplingOptions, TextDelta
from services.gpu_worker.engines.transformers_engine import TransformersEngine

POISON = 63  # the token id the faulty model cannot take
VOCAB = 64


class CharTokenizer:
    """One token per character (ids 1..62); enough of a tokenizer for the engine."""

    chat_template = None
    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [POISON if c == "!" else 1 + ord(c) % 62 for c in text]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)


class FailsOn:
    """Wraps a model: any forward pass that sees the `bad` token raises `error`."""

    def __init__(self, model, bad: int, error: Exception) -> None:
        self.model, self.bad, self.error = model, bad, error

    def __call__(self, input_ids, **kwargs):
        if bool((input_ids == self.bad).any()):
            raise self.error
        return self.model(input_ids=input_ids, **kwargs)

    def parameters(self):
        return self.model.parameters()


def engine_with(error: Exception) -> TransformersEngine:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    spec = ModelSpec(
        "tiny",
        "transformers",
        max_context_tokens=256,
        max_output_tokens=64,
        default_max_tokens=16,
        max_slots=8,
        source="in-memory",
    )
    engine = TransformersEngine(spec, cache_dir=None, device="cpu")
    engine._tokenizer, engine._model = CharTokenizer(), FailsOn(model, POISON, error)
    engine._eos = set()  # run every sequence to max_tokens
    engine._start(model, time.monotonic())
    return engine


def run(engine, prompts: list[str], max_tokens: int = 12, **sampling) -> list[object]:
    """Submits every prompt at once; returns each one's text, or the error it ended with."""
    done = [threading.Event() for _ in prompts]
    results: list[object] = [""] * len(prompts)

    def sink_for(i: int):
        def sink(event):
            if isinstance(event, TextDelta):
                results[i] += event.text
            else:
                results[i] = event if isinstance(event, BaseException) else results[i]
                done[i].set()

        return sink

    for i, prompt in enumerate(prompts):
        options = SamplingOptions(**sampling)
        engine.submit(GenerationInput(f"r{i}", prompt, max_tokens, options), sink_for(i))
    for event in done:
        assert event.wait(30)
    return results


@pytest.fixture
def engine():
    running = engine_with(ValueError("cannot take this token"))
    yield running
    running.close()


def test_a_poison_request_fails_alone_and_the_batch_goes_on(engine):
    alone = run(engine, ["hello", "world"])
    together = run(engine, ["hello", "bad!", "world"])
    assert together[0] == alone[0] and together[2] == alone[1]  # nothing lost or changed
    assert isinstance(together[1], InvalidArgument)
    assert "not retried" in together[1].message
    assert engine.healthy
    assert run(engine, ["again"])[0]  # still serving


def test_extreme_sampling_values_end_with_text(engine):
    extremes = [
        {"temperature": 1e-30},
        {"temperature": 2.0, "top_p": 1e-30},
        {"temperature": 2.0, "top_k": 1},
        {"temperature": 0.5, "top_k": 10**6, "seed": 2**64 - 1},
        {"temperature": float("nan")},
    ]
    for sampling in extremes:
        [text] = run(engine, ["hello"], **sampling)
        assert isinstance(text, str) and text, sampling
    assert engine.healthy


def test_a_device_fault_makes_the_engine_unhealthy():
    engine = engine_with(RuntimeError("CUDA error: an illegal memory access was encountered"))
    try:
        results = run(engine, ["hello", "bad!"])
        assert all(isinstance(r, Unavailable) for r in results)
        assert not engine.healthy
    finally:
        engine.close()


def test_faults_in_every_request_in_a_row_are_the_engines():
    engine = engine_with(ValueError("broken"))
    try:
        engine._model.bad = 1 + ord("p") % 62  # now every prompt below makes it fail
        for i in range(3):
            [result] = run(engine, [f"p{i}"])
            assert isinstance(result, InvalidArgument)
        assert not engine.healthy
    finally:
        engine.close()


def test_finished_events_report_the_tokens(engine):
    events = []
    done = threading.Event()

    def sink(event):
        events.append(event)
        if isinstance(event, Finished):
            done.set()

    engine.submit(GenerationInput("x", "hello", 5), sink)
    assert done.wait(30)
    assert events[-1].completion_tokens == 5


def test_out_of_device_memory_moves_the_request_on_and_is_not_a_streak():
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    engine = engine_with(oom)
    try:
        for _ in range(4):  # past the streak limit, were these the requests' faults
            [alone] = run(engine, ["oh!"])
            assert isinstance(alone, Unavailable)  # the router moves it to another worker
        assert engine.healthy
        ok, moved = run(engine, ["hello", "bad!"])
        assert isinstance(ok, str) and ok and isinstance(moved, Unavailable)
    finally:
        engine.close()
