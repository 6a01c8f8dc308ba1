"""The embedding engine with the real all-MiniLM-L6-v2 on the CPU."""

import threading

import pytest

from services.common.config import read_toml
from services.common.errors import InvalidArgument
from services.gpu_worker import config as worker_config
from services.gpu_worker.engines.base import Embeddings
from services.gpu_worker.engines.embedding import SentenceEmbeddingEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    config = worker_config.load(read_toml("deploy/local/config.toml"), {}, {})
    engine = SentenceEmbeddingEngine(config.catalog["minilm-l6-v2"], "cpu")
    engine.load()
    yield engine
    engine.close()


def embed(engine, texts):
    done = threading.Event()
    result = []
    engine.embed(texts, lambda event: (result.append(event), done.set()))
    assert done.wait(60)
    return result[0]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_are_384_dim_normalized_and_meaningful(engine):
    out = embed(
        engine,
        [
            "A cat sits on the mat.",
            "A kitten is sitting on a rug.",
            "The stock market fell sharply today.",
        ],
    )
    assert isinstance(out, Embeddings) and out.prompt_tokens > 10
    cat, kitten, stocks = out.vectors
    assert len(cat) == 384
    assert abs(dot(cat, cat) - 1.0) < 1e-4
    assert dot(cat, kitten) > 0.5 > dot(cat, stocks)


def test_requests_batched_together_get_the_same_vectors_as_alone(engine):
    texts = ["first text", "a second, longer text about embeddings and batching", "third"]
    alone = [embed(engine, [t]).vectors[0] for t in texts]
    results: dict[int, list[float]] = {}

    def one(i):
        results[i] = embed(engine, [texts[i]]).vectors[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for i, vector in enumerate(alone):
        assert dot(vector, results[i]) > 0.9999


def test_an_input_beyond_the_context_is_invalid(engine):
    assert isinstance(embed(engine, ["word " * 400]), InvalidArgument)


def test_an_empty_request_gets_no_vectors_and_the_engine_serves_on(engine):
    out = embed(engine, [])
    assert isinstance(out, Embeddings) and out.vectors == [] and out.prompt_tokens == 0
    assert engine.healthy
    assert len(embed(engine, ["still serving"]).vectors) == 1


def test_the_batch_being_computed_counts_as_active(engine, monkeypatch):
    """Drain and heartbeats count what the engine computes, not only what waits."""
    computing, release = threading.Event(), threading.Event()
    forward = engine._forward

    def slow_forward(texts):
        computing.set()
        assert release.wait(30)
        return forward(texts)

    monkeypatch.setattr(engine, "_forward", slow_forward)
    done = threading.Event()
    engine.embed(["one", "two"], lambda event: done.set())
    assert computing.wait(30)
    assert engine.active_sequences() == 1 and engine.stats().running == 1
    release.set()
    assert done.wait(30)
    assert engine.active_sequences() == 0
