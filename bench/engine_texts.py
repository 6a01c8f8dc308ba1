"""Greedy texts (or embeddings) of one engine for a set of prompts, as JSON: the check that a
model gives the same output on every engine (and so that a stream can move between them).

    .venv/bin/python -m bench.engine_texts --engine transformers
    .venv-vllm/bin/python -m bench.engine_texts --engine vllm
    .venv-vllm/bin/python -m bench.engine_texts --engine vllm-embedding --model minilm-l6-v2

Each runs the config's model (default `smollm2-135m` from deploy/local/config.toml) on that
engine in this process, submits every prompt at once (as a loaded worker batches them), and
prints {"engine", "seconds", "texts"}, or "vectors" for an embedding model (`--out`: to a
file too).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import time
import tomllib
from pathlib import Path

from services.common.catalog import EMBEDDING_ENGINES as EMBEDDING
from services.common.catalog import parse_catalog
from services.gpu_worker.engines import create_engine
from services.gpu_worker.engines.base import GenerationInput, TextDelta

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 12?",
    "Give me a synonym for happy.",
    "Who wrote Romeo and Juliet?",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water?",
    "List two planets of the solar system.",
    "Describe a cat in five words.",
    "What does a CPU do?",
    "Suggest a name for a dog.",
    "Why is the sky blue?",
    "Tell me a fun fact about octopuses.",
    "How many days are in a leap year?",
]


async def greedy_texts(engine, prompts: list[str], max_tokens: int) -> list[str]:
    """Runs every prompt at once, from an event loop as the worker does; returns their texts
    (an error event raises)."""
    loop = asyncio.get_running_loop()
    texts: list[list[str]] = [[] for _ in prompts]
    ends = [loop.create_future() for _ in prompts]

    def take(i: int, event: object) -> None:
        if isinstance(event, TextDelta):
            texts[i].append(event.text)
        elif not ends[i].done():
            ends[i].set_result(event)

    for i, prompt in enumerate(prompts):
        sink = functools.partial(loop.call_soon_threadsafe, take, i)
        engine.submit(GenerationInput(f"check-{i}", prompt, max_tokens), sink)
    for end in await asyncio.gather(*ends):
        if isinstance(end, BaseException):
            raise end
    return ["".join(t) for t in texts]


async def embeddings(engine, prompts: list[str]) -> list[list[float]]:
    """Embeds the prompts in two requests at once; returns their vectors in order."""
    loop = asyncio.get_running_loop()
    halves = [prompts[: len(prompts) // 2], prompts[len(prompts) // 2 :]]
    ends = [loop.create_future() for _ in halves]
    for half, end in zip(halves, ends, strict=True):
        engine.embed(half, functools.partial(loop.call_soon_threadsafe, end.set_result))
    vectors = []
    for result in await asyncio.gather(*ends):
        if isinstance(result, BaseException):
            raise result
        vectors.extend(result.vectors)
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True, choices=["transformers", "vllm", *EMBEDDING])
    parser.add_argument("--config", default=str(ROOT / "deploy/local/config.toml"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache/models"))
    parser.add_argument("--out", help="write the JSON here too (vLLM logs to stdout)")
    args = parser.parse_args()
    catalog = parse_catalog(tomllib.loads(Path(args.config).read_text())["models"])
    spec = dataclasses.replace(catalog[args.model], engine=args.engine)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = create_engine(spec, Path(args.cache_dir), device)
    engine.load()
    started = time.monotonic()
    try:
        if spec.kind == "embedding":
            key, output = "vectors", asyncio.run(embeddings(engine, PROMPTS))
        else:
            key, output = "texts", asyncio.run(greedy_texts(engine, PROMPTS, args.max_tokens))
    finally:
        engine.close()
    seconds = time.monotonic() - started
    result = json.dumps({"engine": args.engine, "seconds": seconds, key: output})
    print(result)
    if args.out:
        Path(args.out).write_text(result)


if __name__ == "__main__":
    main()
