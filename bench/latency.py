"""Warm first-token latency through the whole stack, beside the worker alone.

    python -m bench.latency [--requests 30] [--out bench/results/latency.json]

Starts scheduler, one worker and router as processes (as `make up` does), warms up, then
sends sequential requests and measures, at the client, the time to the first token message
and to the end of the stream: through the router (which acquires a lease from the scheduler,
then streams from the worker) and straight to the worker's Execute (1 hop, with a lease the
bench signs itself), for the real SmolLM2 and the simulated 70B.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, types_pb2, worker_pb2_grpc

from bench import direct
from bench.local_system import LocalSystem

PROMPT = "What is the capital of France?"


def timed_stream(call) -> tuple[float, float, int]:
    """(ms to first delta, ms to end, messages) of a streaming call started just now."""
    start = time.perf_counter()
    first, count = None, 0
    for message in call:
        count += 1
        if first is None and message.HasField("delta"):
            first = time.perf_counter()
    end = time.perf_counter()
    return (first - start) * 1000, (end - start) * 1000, count


def measure(path: str, model: str, n: int, system: LocalSystem, max_tokens: int) -> dict:
    request = types_pb2.GenerateRequest(
        model_id=model, prompt=PROMPT, max_tokens=max_tokens, priority=types_pb2.PRIORITY_HIGH
    )
    if path == "stack":
        channel = grpc.insecure_channel(system.router_address)
        stub = router_pb2_grpc.RouterStub(channel)

        def call(i):
            return stub.Generate(request, timeout=60)
    else:
        channel = grpc.insecure_channel(system.worker_addresses[0])
        worker = worker_pb2_grpc.WorkerStub(channel)
        [worker_id] = direct.worker_ids(system.scheduler_address)
        ids = itertools.count()

        def call(i):
            n = next(ids)  # a lease runs once: every call has its own
            request.request_id = f"direct-{model}-{n}"
            execute = direct.leased(request, worker_id, f"bench-{model}-{n}")
            return worker.Execute(execute, metadata=direct.METADATA, timeout=60)

    for i in range(3):  # warm-up: channels, caches, first model step
        timed_stream(call(i))
    samples = [timed_stream(call(i)) for i in range(n)]
    channel.close()
    firsts = sorted(s[0] for s in samples)
    totals = [s[1] for s in samples]
    return {
        "path": path,
        "model": model,
        "requests": n,
        "max_tokens": max_tokens,
        "ttft_ms_p50": statistics.median(firsts),
        "ttft_ms_p90": firsts[int(0.9 * (len(firsts) - 1))],
        "ttft_ms_min": firsts[0],
        "total_ms_p50": statistics.median(totals),
        "messages_mean": statistics.mean(s[2] for s in samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--out", default="bench/results/latency.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        system = LocalSystem(Path(logs), env=direct.env(Path(logs)))
        system.start()
        try:
            rows = [
                measure(path, model, args.requests, system, max_tokens)
                for model, max_tokens in [("smollm2-135m", 16), ("llama-3-70b", 16)]
                for path in ("worker", "stack")
            ]
        finally:
            system.stop()
    print(
        f"{'model':<14} {'path':<7} {'ttft p50':>9} {'ttft p90':>9} {'ttft min':>9} "
        f"{'total p50':>10} {'msgs':>5}"
    )
    for r in rows:
        print(
            f"{r['model']:<14} {r['path']:<7} {r['ttft_ms_p50']:>7.1f}ms {r['ttft_ms_p90']:>7.1f}ms"
            f" {r['ttft_ms_min']:>7.1f}ms {r['total_ms_p50']:>8.1f}ms {r['messages_mean']:>5.1f}"
        )
    for model in ("smollm2-135m", "llama-3-70b"):
        by_path = {r["path"]: r for r in rows if r["model"] == model}
        extra = by_path["stack"]["ttft_ms_p50"] - by_path["worker"]["ttft_ms_p50"]
        print(f"{model}: router+scheduler add {extra:.1f} ms to the first token (p50)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
