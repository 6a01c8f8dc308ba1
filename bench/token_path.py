"""The token path: the whole stack against the worker alone, on a fast simulated model.

    python -m bench.token_path [--seconds 8] [--streams 64] [--out bench/results/token_path.json]

Tokens do not cross the scheduler: the router acquires a lease (one call), then streams from
the worker. Everything runs as processes on 127.0.0.1, in one run, on a simulated model with
1 ms decode steps and 64 slots (the client, router, scheduler and worker share the cores):

1. saturation: `--streams` closed-loop streams of 32 tokens for `--seconds`, calls/s and
   tokens/s through the stack and straight to the worker (with leases the bench signs), one
   message per token (flush 0) and coalesced (flush 5 ms);
2. CPU per request of the scheduler and of the router at 32 and at 512 output tokens (process
   CPU time over a fixed number of requests, less its idle rate);
3. unloaded first-token latency, stack and worker alone, p50 over sequential requests.

`--baseline DIR` also measures the stack of another checkout (for example the revision before
this change: `git worktree add /tmp/before <rev>`) in the same run: at saturation, its CPU per
request, and its unloaded first token taken in turn with this stack's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import psutil
from inference.v1 import router_pb2_grpc, types_pb2, worker_pb2_grpc

from bench import direct
from bench.sim_cluster import MODEL_ID, sim_cluster

_ids = itertools.count()


class Paths:
    """The two ways to run a request: through the router, or straight to the worker."""

    def __init__(self, system, direct_calls: bool = True) -> None:
        self.router = grpc.aio.insecure_channel(system.router_address)
        self.worker = grpc.aio.insecure_channel(system.worker_addresses[0])
        self.stack_stub = router_pb2_grpc.RouterStub(self.router)
        self.worker_stub = worker_pb2_grpc.WorkerStub(self.worker)
        if direct_calls:
            [self.worker_id] = direct.worker_ids(system.scheduler_address)

    def call(self, path: str, tokens: int):
        n = next(_ids)
        request = types_pb2.GenerateRequest(
            model_id=MODEL_ID, prompt=f"token path {n}", max_tokens=tokens, request_id=f"tp-{n}"
        )
        if path == "stack":
            return self.stack_stub.Generate(request, timeout=60)
        execute = direct.leased(request, self.worker_id, f"tp-lease-{n}")
        return self.worker_stub.Execute(execute, metadata=direct.METADATA, timeout=60)

    async def close(self) -> None:
        await self.router.close()
        await self.worker.close()


async def run_one(paths: Paths, path: str, tokens: int) -> tuple[int, int, float]:
    """(tokens, messages, ms to the first token) of one request."""
    start = time.perf_counter()
    first, got, messages = 0.0, 0, 0
    async for message in paths.call(path, tokens):
        messages += 1
        if message.HasField("delta"):
            got += message.delta.token_count
            first = first or (time.perf_counter() - start) * 1000
    return got, messages, first


async def saturate(paths: Paths, path: str, streams: int, seconds: float) -> dict:
    """Closed loop: `streams` clients each sending 32-token requests back to back."""
    done = {"calls": 0, "tokens": 0, "messages": 0}
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            tokens, messages, _ = await run_one(paths, path, 32)
            done["calls"] += 1
            done["tokens"] += tokens
            done["messages"] += messages

    await asyncio.gather(*(run_one(paths, path, 32) for _ in range(streams)))  # warm-up
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(streams)))
    elapsed = time.perf_counter() - started
    return {
        "calls_per_s": done["calls"] / elapsed,
        "tokens_per_s": done["tokens"] / elapsed,
        "messages_per_call": done["messages"] / max(1, done["calls"]),
    }


async def cpu_per_request(paths: Paths, procs: dict, tokens: int, requests: int) -> dict:
    """CPU ms per request of each process, less what it burns idle over the same time."""
    idle = {name: cpu_seconds(p) for name, p in procs.items()}
    await asyncio.sleep(2.0)
    idle_rate = {name: (cpu_seconds(p) - idle[name]) / 2.0 for name, p in procs.items()}
    before = {name: cpu_seconds(p) for name, p in procs.items()}
    started = time.perf_counter()
    queue = iter(range(requests))

    async def client() -> None:
        for _ in queue:
            await run_one(paths, "stack", tokens)

    await asyncio.gather(*(client() for _ in range(32)))
    elapsed = time.perf_counter() - started
    return {
        name: (cpu_seconds(p) - before[name] - idle_rate[name] * elapsed) * 1000 / requests
        for name, p in procs.items()
    }


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def first_tokens(ways: dict[str, tuple[Paths, str]], requests: int) -> dict[str, float]:
    """p50 ms to the first token of unloaded requests, one at a time, the ways (name → paths
    and path) taken in turn, so that the machine's noise falls on each alike."""
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for n in range(5 + requests):
        for name, (paths, path) in ways.items():
            first = (await run_one(paths, path, 4))[2]
            if n >= 5:  # the first few warm the connections
                samples[name].append(first)
    return {name: statistics.median(values) for name, values in samples.items()}


async def first_token_beside(paths: Paths, args, logs: Path) -> dict[str, float]:
    """Unloaded first tokens: the worker alone and this stack, and with `--baseline` that
    checkout's stack, running alongside."""
    ways = {"worker": (paths, "worker"), "stack": (paths, "stack")}
    if not args.baseline:
        return await first_tokens(ways, 100)
    system = sim_cluster(logs / "baseline-ttft", 1, 64, 1.0, 0.0, root=Path(args.baseline))
    system.start(ready_timeout_s=120)
    then = Paths(system, direct_calls=False)
    try:
        return await first_tokens({**ways, "baseline": (then, "stack")}, 100)
    finally:
        await then.close()
        system.stop()


async def measure(flush_ms: float, args, logs: Path) -> dict:
    here = logs / f"flush-{flush_ms:g}"
    system = sim_cluster(here, 1, slots=64, step_ms=1.0, flush_ms=flush_ms, env=direct.env(here))
    system.start(ready_timeout_s=120)
    paths = Paths(system)
    try:
        row: dict = {"flush_ms": flush_ms}
        for path in ("worker", "stack"):
            row[path] = await saturate(paths, path, args.streams, args.seconds)
        if args.baseline:
            row["baseline"] = await baseline(flush_ms, args, logs)
        if flush_ms == 0:
            procs = {n: psutil.Process(system.procs[n].pid) for n in ("scheduler", "router")}
            row["cpu_ms_per_request"] = {
                str(tokens): await cpu_per_request(paths, procs, tokens, args.requests)
                for tokens in (32, 512)
            }
            row["ttft_ms_p50"] = await first_token_beside(paths, args, logs)
        return row
    finally:
        await paths.close()
        system.stop()


async def baseline(flush_ms: float, args, logs: Path) -> dict:
    """The stack of another checkout, at saturation, on the same model."""
    system = sim_cluster(
        logs / f"baseline-{flush_ms:g}", 1, 64, 1.0, flush_ms, root=Path(args.baseline)
    )
    system.start(ready_timeout_s=120)
    paths = Paths(system, direct_calls=False)
    try:
        row = await saturate(paths, "stack", args.streams, args.seconds)
        if flush_ms == 0:
            procs = {n: psutil.Process(system.procs[n].pid) for n in ("scheduler", "router")}
            row["cpu_ms_per_request"] = {
                str(tokens): await cpu_per_request(paths, procs, tokens, args.requests)
                for tokens in (32, 512)
            }
        return row
    finally:
        await paths.close()
        system.stop()


def report(rows: list[dict]) -> None:
    print(f"{'messages':<22} {'path':<9} {'calls/s':>8} {'tokens/s':>9} {'msgs/call':>9}")
    for row in rows:
        kind = "one per token" if row["flush_ms"] == 0 else f"coalesced {row['flush_ms']:g} ms"
        for path in ("worker", "stack", "baseline"):
            if path not in row:
                continue
            r = row[path]
            print(
                f"{kind:<22} {path:<9} {r['calls_per_s']:>8.0f} {r['tokens_per_s']:>9.0f}"
                f" {r['messages_per_call']:>9.1f}"
            )
        for path in ("stack", "baseline"):
            if path in row:
                ratio = row[path]["tokens_per_s"] / row["worker"]["tokens_per_s"]
                print(f"{'':<22} {path} / worker alone: {ratio:.2f}x")
    stacks = {"stack": rows[0]["cpu_ms_per_request"]}
    if "baseline" in rows[0]:
        stacks["baseline"] = rows[0]["baseline"]["cpu_ms_per_request"]
    for stack, cpu in stacks.items():
        for name in ("scheduler", "router"):
            a, b = cpu["32"][name], cpu["512"][name]
            print(
                f"{stack} {name} CPU per request: {a:.2f} ms at 32 tokens, {b:.2f} ms at 512"
                f" ({b / a:.2f}x)"
            )
    ttft = rows[0]["ttft_ms_p50"]
    print(
        f"first token p50, unloaded: worker alone {ttft['worker']:.2f} ms, stack "
        f"{ttft['stack']:.2f} ms: router + scheduler add {ttft['stack'] - ttft['worker']:.2f} ms"
    )
    if "baseline" in ttft:
        print(
            f"first token p50, unloaded, baseline stack {ttft['baseline']:.2f} ms (taken in turn"
            f" with the above): router + scheduler add {ttft['baseline'] - ttft['worker']:.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--baseline", default="", help="another checkout whose stack to measure")
    parser.add_argument("--out", default="bench/results/token_path.json")
    args = parser.parse_args()
    if args.baseline:
        args.baseline = str(Path(args.baseline).resolve())
    with tempfile.TemporaryDirectory() as logs:
        rows = [asyncio.run(measure(flush, args, Path(logs))) for flush in (0.0, 5.0)]
    report(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpus": os.cpu_count(), "args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
