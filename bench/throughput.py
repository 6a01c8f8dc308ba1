"""Decode throughput of SmolLM2: the engine alone vs the whole stack, at 1/4/16/64 streams.

    python -m bench.throughput [--tokens 32] [--out bench/results/throughput.json]

In one run: first the transformers engine in this process (N sequences submitted at once),
then router → scheduler → worker as processes (N concurrent Generate streams from client
threads), with the same prompts, max_tokens and 64 slots. Two figures per round:
- tokens/s with prefill included: completion tokens over the round's wall time;
- decode-phase tokens/s: tokens after each stream's first, over the span from the earliest
  first token to the latest last one.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, types_pb2

from bench.local_system import LocalSystem
from services.common.config import read_toml
from services.gpu_worker import config as worker_config
from services.gpu_worker.engines.base import Finished, GenerationInput, TextDelta
from services.gpu_worker.engines.transformers_engine import TransformersEngine

CONCURRENCY = (1, 4, 16, 64)
SLOTS = 64
TOPICS = ["dragons", "the sea", "robots", "a city", "the moon", "a forest", "trains", "music"]


@dataclass
class StreamTiming:
    """One stream as its consumer saw it."""

    first: float = 0.0  # perf_counter of the first token
    last: float = 0.0  # perf_counter of the last token
    tokens: int = 0


def prompts(n: int) -> list[str]:
    return [f"Write a long story about {TOPICS[i % len(TOPICS)]} (#{i})." for i in range(n)]


def bench_config(directory: Path) -> Path:
    """The default config with SLOTS slots for smollm2-135m."""
    text = Path("deploy/local/config.toml").read_text()
    text = text.replace("max_slots = 16", f"max_slots = {SLOTS}", 1)
    path = directory / "bench.toml"
    path.write_text(text)
    return path


def summarize(start: float, end: float, streams: list[StreamTiming]) -> dict[str, float]:
    total = sum(s.tokens for s in streams)
    after_first = sum(max(0, s.tokens - 1) for s in streams)
    span = max(s.last for s in streams) - min(s.first for s in streams)
    return {"tok_s": total / (end - start), "decode_tok_s": after_first / span if span else 0.0}


def engine_round(engine: TransformersEngine, n: int, tokens: int) -> dict[str, float]:
    done = threading.Semaphore(0)
    streams = [StreamTiming() for _ in range(n)]

    def sink_for(timing: StreamTiming):
        def sink(event):
            if isinstance(event, TextDelta) and event.token_count:
                timing.first = timing.first or time.perf_counter()
                timing.last = time.perf_counter()
            elif isinstance(event, Finished):
                timing.tokens = event.completion_tokens
                done.release()

        return sink

    start = time.perf_counter()
    for i, prompt in enumerate(prompts(n)):
        engine.submit(GenerationInput(f"b{i}", prompt, tokens), sink_for(streams[i]))
    for _ in range(n):
        done.acquire()
    return summarize(start, time.perf_counter(), streams)


def stack_round(address: str, n: int, tokens: int) -> dict[str, float]:
    channel = grpc.insecure_channel(address)
    stub = router_pb2_grpc.RouterStub(channel)

    def one(prompt: str) -> StreamTiming:
        timing = StreamTiming()
        request = types_pb2.GenerateRequest(
            model_id="smollm2-135m", prompt=prompt, max_tokens=tokens
        )
        for message in stub.Generate(request, timeout=600):
            if message.HasField("delta") and message.delta.token_count:
                timing.first = timing.first or time.perf_counter()
                timing.last = time.perf_counter()
            elif message.HasField("summary"):
                timing.tokens = message.summary.completion_tokens
        return timing

    with ThreadPoolExecutor(n) as pool:
        start = time.perf_counter()
        streams = list(pool.map(one, prompts(n)))
        end = time.perf_counter()
    channel.close()
    return summarize(start, end, streams)


def run(tokens: int, directory: Path) -> list[dict]:
    rows: dict[int, dict] = {n: {"streams": n} for n in CONCURRENCY}
    config_path = bench_config(directory)
    config = worker_config.load(read_toml(config_path), {}, {})
    engine = TransformersEngine(config.catalog["smollm2-135m"], Path(config.cache_dir), "cpu")
    engine.load()
    engine_round(engine, 4, 4)  # warm-up
    for n in CONCURRENCY:
        result = engine_round(engine, n, tokens)
        rows[n].update({f"engine_{k}": v for k, v in result.items()})
        print(f"engine {n:>3} streams: {result}", flush=True)
    engine.close()
    logs = directory / "logs"
    logs.mkdir()
    system = LocalSystem(logs, env={"INFERENCE_CONFIG": str(config_path)})
    system.start()
    try:
        stack_round(system.router_address, 4, 4)  # warm-up
        for n in CONCURRENCY:
            result = stack_round(system.router_address, n, tokens)
            rows[n].update({f"stack_{k}": v for k, v in result.items()})
            print(f"stack  {n:>3} streams: {result}", flush=True)
    finally:
        system.stop()
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", default="bench/results/throughput.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = run(args.tokens, Path(tmp))
    for r in table:
        r["stack_vs_engine"] = r["stack_tok_s"] / r["engine_tok_s"]
        r["stack_vs_engine_decode"] = r["stack_decode_tok_s"] / r["engine_decode_tok_s"]
    print(f"\n{'':>7} {'tokens/s, prefill included':^32}   {'decode-phase tokens/s':^32}")
    print(
        f"{'streams':>7} {'engine':>10} {'stack':>10} {'stack/eng':>10}   "
        f"{'engine':>10} {'stack':>10} {'stack/eng':>10}"
    )
    for r in table:
        print(
            f"{r['streams']:>7} {r['engine_tok_s']:>10.1f} {r['stack_tok_s']:>10.1f} "
            f"{r['stack_vs_engine']:>10.0%}   {r['engine_decode_tok_s']:>10.1f} "
            f"{r['stack_decode_tok_s']:>10.1f} {r['stack_vs_engine_decode']:>10.0%}"
        )
    first, last = table[0], table[-1]
    scale = {
        key: last[key] / first[key]
        for key in ("engine_tok_s", "stack_tok_s", "engine_decode_tok_s", "stack_decode_tok_s")
    }
    print("64-stream / 1-stream: " + ", ".join(f"{k} {v:.1f}x" for k, v in scale.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "max_tokens": args.tokens,
                "rows": table,
                "scale_64_over_1": scale,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
