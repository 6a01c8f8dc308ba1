"""Decode throughput of SmolLM2: the engine alone vs the whole stack, at 1/4/16/64 streams.

    python -m bench.throughput [--tokens 32] [--out bench/results/throughput.json]

In one run: first the transformers engine in this process (N sequences submitted at once),
then router → scheduler → worker as processes (N concurrent Generate streams from a client
process's threads), with the same prompts, max_tokens and slots (64). Tokens/s counts
completion tokens over the wall time of each round. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, types_pb2

from bench.local_system import LocalSystem
from services.common.config import read_toml
from services.gpu_worker import config as worker_config
from services.gpu_worker.engines.base import Finished, GenerationInput
from services.gpu_worker.engines.transformers_engine import TransformersEngine

CONCURRENCY = (1, 4, 16, 64)
SLOTS = 64
TOPICS = ["dragons", "the sea", "robots", "a city", "the moon", "a forest", "trains", "music"]


def prompts(n: int) -> list[str]:
    return [f"Write a long story about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(n)]


def bench_config(directory: Path) -> Path:
    """The default config with SLOTS slots for smollm2-135m."""
    text = Path("deploy/local/config.toml").read_text()
    text = text.replace("max_slots = 16", f"max_slots = {SLOTS}", 1)
    path = directory / "bench.toml"
    path.write_text(text)
    return path


def engine_round(engine: TransformersEngine, n: int, tokens: int) -> tuple[float, int]:
    done = threading.Semaphore(0)
    produced = [0]

    def sink(event):
        if isinstance(event, Finished):
            produced[0] += event.completion_tokens
            done.release()
        elif isinstance(event, BaseException):
            raise event

    start = time.perf_counter()
    for i, prompt in enumerate(prompts(n)):
        engine.submit(GenerationInput(f"b{i}", prompt, tokens), sink)
    for _ in range(n):
        done.acquire()
    return time.perf_counter() - start, produced[0]


def stack_round(address: str, n: int, tokens: int) -> tuple[float, int]:
    channel = grpc.insecure_channel(address)
    stub = router_pb2_grpc.RouterStub(channel)

    def one(prompt: str) -> int:
        request = types_pb2.GenerateRequest(
            model_id="smollm2-135m", prompt=prompt, max_tokens=tokens
        )
        return [m for m in stub.Generate(request, timeout=600)][-1].summary.completion_tokens

    with ThreadPoolExecutor(n) as pool:
        start = time.perf_counter()
        produced = sum(pool.map(one, prompts(n)))
        elapsed = time.perf_counter() - start
    channel.close()
    return elapsed, produced


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", default="bench/results/throughput.json")
    args = parser.parse_args()
    rows: dict[int, dict] = {n: {"streams": n} for n in CONCURRENCY}
    with tempfile.TemporaryDirectory() as tmp:
        config_path = bench_config(Path(tmp))
        config = worker_config.load(read_toml(config_path), {}, {})
        engine = TransformersEngine(config.catalog["smollm2-135m"], Path(config.cache_dir), "cpu")
        engine.load()
        engine_round(engine, 4, 4)  # warm-up
        for n in CONCURRENCY:
            elapsed, produced = engine_round(engine, n, args.tokens)
            rows[n]["engine_tok_s"] = produced / elapsed
            print(f"engine {n:>3} streams: {produced / elapsed:7.1f} tok/s", flush=True)
        engine.close()
        del engine
        logs = Path(tmp) / "logs"
        logs.mkdir()
        system = LocalSystem(logs, env={"INFERENCE_CONFIG": str(config_path)})
        system.start()
        try:
            stack_round(system.router_address, 4, 4)  # warm-up
            for n in CONCURRENCY:
                elapsed, produced = stack_round(system.router_address, n, args.tokens)
                rows[n]["stack_tok_s"] = produced / elapsed
                print(f"stack  {n:>3} streams: {produced / elapsed:7.1f} tok/s", flush=True)
        finally:
            system.stop()
    table = list(rows.values())
    for row in table:
        row["stack_vs_engine"] = row["stack_tok_s"] / row["engine_tok_s"]
    print(f"\n{'streams':>7} {'engine tok/s':>13} {'stack tok/s':>12} {'stack/engine':>13}")
    for row in table:
        print(
            f"{row['streams']:>7} {row['engine_tok_s']:>13.1f} {row['stack_tok_s']:>12.1f} "
            f"{row['stack_vs_engine']:>12.0%}"
        )
    scale_stack = rows[64]["stack_tok_s"] / rows[1]["stack_tok_s"]
    scale_engine = rows[64]["engine_tok_s"] / rows[1]["engine_tok_s"]
    print(f"64-stream / 1-stream: stack {scale_stack:.1f}x, engine {scale_engine:.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "max_tokens": args.tokens,
                "rows": table,
                "stack_64_over_1": scale_stack,
                "engine_64_over_1": scale_engine,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
