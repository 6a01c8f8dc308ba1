"""Requests/s the router sustains with rate limiting on, against the same path with it off.

    python -m bench.ratelimit_overhead [--seconds 10] [--out bench/results/ratelimit.json]

In one process and one run: a router, a scheduler and one worker with a fast simulated
model, in-process on loopback; 64 concurrent aio clients send Infer requests of 2 tokens for
a fixed time as one tenant, first with limits so high they never refuse (every request still
pays authentication, the buckets and the reservation), then with the tenant unlimited.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc

from services.router.config import TenantSpec
from services.router.ratelimit import Limits
from tests.stack import request, sim_model, start_stack

KEY = (("authorization", "Bearer bench-key"),)


async def load(address: str, seconds: float, concurrency: int = 64) -> float:
    done = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await stub.Infer(request(max_tokens=2), metadata=KEY, timeout=30)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        return done / (time.perf_counter() - start)


async def measure(limits: Limits | None, seconds: float) -> float:
    tenant = TenantSpec("bench", hashlib.sha256(b"bench-key").hexdigest(), limits=limits)
    stack = await start_stack(
        [sim_model(slots=64, step_ms=1.0)], tenants=[tenant], allow_anonymous=False
    )
    try:
        await load(stack.router_address, 1.0)  # warm-up
        return await load(stack.router_address, seconds)
    finally:
        await stack.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default="bench/results/ratelimit.json")
    args = parser.parse_args()
    generous = Limits(
        requests_per_s=1e6,
        burst_requests=1e6,
        tokens_per_s=1e9,
        burst_tokens=1e9,
        max_concurrent_streams=100_000,
    )
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(2):  # alternated, so drift on a shared machine hits both alike
        runs["off"].append(asyncio.run(measure(Limits(), args.seconds)))
        runs["on"].append(asyncio.run(measure(generous, args.seconds)))
    off, on = (sum(runs[k]) / len(runs[k]) for k in ("off", "on"))
    print(f"{'rate limiting':>14} {'requests/s (each run)':>24} {'mean':>7}")
    for name, mean in (("off", off), ("on", on)):
        each = ", ".join(f"{r:.1f}" for r in runs[name])
        print(f"{name:>14} {each:>24} {mean:>7.1f}")
    print(f"on / off: {on / off:.1%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"runs": runs, "off": off, "on": on, "on_over_off": on / off}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
