"""The whole system under three times its capacity: 16 simulated GPU workers, mixed
priorities, equal tenants.

    python -m bench.scheduler_system [--workers 16] [--seconds 30] [--load 3.0]

Scheduler, router and each worker run as their own processes (`bench.sim_cluster`). Each
worker has `--slots` slots of a simulated model decoding a token every 20 ms, so a
`--tokens`-token request holds a slot about tokens × 20 ms and the fleet completes about
workers × slots / (tokens × 0.02) requests a second: its capacity. Requests arrive as a
Poisson process at `--load` times that, 20% high, 30% medium, 50% low priority, spread
evenly over 4 tenants of equal weight, each with a 20 s deadline. The scheduler's queue holds
`--queue` requests (320: ten seconds of capacity).

Reports p50/p99 queue wait per priority (from each summary), GPU slot utilization (leases
held / slots, sampled from GetStatus), Jain's index of tokens served across the tenants,
how every request ended (OK or which status), and the requests that ended with neither a
full response nor a status (must be 0). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, scheduler_pb2_grpc, types_pb2

from bench.sim_cluster import MODEL_ID, sim_cluster, tenant_key
from services.scheduler.core.fairness import jain_index

PRIORITIES = (
    [types_pb2.PRIORITY_HIGH] * 2 + [types_pb2.PRIORITY_MEDIUM] * 3 + [types_pb2.PRIORITY_LOW] * 5
)
TENANTS = 4
STEP_MS = 20.0


class Outcomes:
    def __init__(self) -> None:
        self.codes: Counter[str] = Counter()
        self.waits: dict[int, list[float]] = {p: [] for p in (1, 2, 3)}
        self.tokens: Counter[int] = Counter()
        self.lost = 0  # ended with neither a summary nor a status


async def one_request(stub, i: int, rng: random.Random, tokens: int, out: Outcomes) -> None:
    tenant = i % TENANTS
    priority = rng.choice(PRIORITIES)
    request = types_pb2.GenerateRequest(
        model_id=MODEL_ID, prompt=f"request {i}", max_tokens=tokens, priority=priority
    )
    metadata = (("authorization", f"Bearer {tenant_key(tenant)}"),)
    summary = None
    try:
        async for message in stub.Generate(request, timeout=20.0, metadata=metadata):
            if message.HasField("summary"):
                summary = message.summary
    except grpc.aio.AioRpcError as exc:
        out.codes[exc.code().name] += 1
        return
    if summary is None:
        out.lost += 1
        return
    out.codes["OK"] += 1
    out.waits[priority].append(summary.queue_time_ms)
    out.tokens[tenant] += summary.completion_tokens


async def sample_utilization(scheduler: str, stop: asyncio.Event, samples: list[float]) -> None:
    async with grpc.aio.insecure_channel(scheduler) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        while not stop.is_set():
            status = await stub.GetStatus(types_pb2.GetStatusRequest(), timeout=5)
            if status.total_slots:
                samples.append(status.active_leases / status.total_slots)
            await asyncio.sleep(0.5)


async def drive(router: str, scheduler: str, rate: float, seconds: float, tokens: int) -> dict:
    out, rng, utilization = Outcomes(), random.Random(7), []
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        sampler = asyncio.create_task(sample_utilization(scheduler, stop, utilization))
        tasks, started, i = [], time.monotonic(), 0
        while time.monotonic() - started < seconds:
            tasks.append(asyncio.create_task(one_request(stub, i, rng, tokens, out)))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
        stop.set()
        await sampler
    names = {1: "high", 2: "medium", 3: "low"}
    return {
        "sent": i,
        "codes": dict(out.codes),
        "lost": out.lost,
        "queue_wait_ms": {
            names[p]: {
                "served": len(w),
                "p50": statistics.median(w) if w else None,
                "p99": sorted(w)[int(len(w) * 0.99)] if w else None,
            }
            for p, w in out.waits.items()
        },
        "slot_utilization": statistics.fmean(utilization) if utilization else None,
        "tokens_per_tenant": [out.tokens[t] for t in range(TENANTS)],
        "jain_index": jain_index([out.tokens[t] for t in range(TENANTS)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--load", type=float, default=3.0)
    parser.add_argument("--queue", type=int, default=320, help="scheduler queue capacity")
    parser.add_argument("--out", default="bench/results/scheduler_system.json")
    args = parser.parse_args()
    capacity = args.workers * args.slots / (args.tokens * STEP_MS / 1000.0)
    with tempfile.TemporaryDirectory() as logs:
        cluster = sim_cluster(
            Path(logs),
            args.workers,
            args.slots,
            STEP_MS,
            flush_ms=100.0,
            tenants=TENANTS,
            queue_capacity=args.queue,
        )
        cluster.start(ready_timeout_s=300)
        try:
            scheduler = f"127.0.0.1:{cluster.ports['scheduler']}"
            result = asyncio.run(
                drive(
                    cluster.router_address,
                    scheduler,
                    capacity * args.load,
                    args.seconds,
                    args.tokens,
                )
            )
        finally:
            cluster.kill()
    result.update(
        workers=args.workers,
        slots=args.slots,
        capacity_rps=capacity,
        offered_rps=capacity * args.load,
        seconds=args.seconds,
        queue_capacity=args.queue,
    )
    print_table(result)
    Path(args.out).write_text(json.dumps(result, indent=2))


def print_table(result: dict) -> None:
    print(
        f"{result['workers']} workers × {result['slots']} slots, capacity "
        f"{result['capacity_rps']:.0f} req/s, offered {result['offered_rps']:.0f} req/s for "
        f"{result['seconds']:.0f} s: {result['sent']} sent"
    )
    print(f"{'priority':<8} {'served':>7} {'wait p50 ms':>12} {'wait p99 ms':>12}")
    for name, row in result["queue_wait_ms"].items():
        p50 = f"{row['p50']:.0f}" if row["p50"] is not None else "-"
        p99 = f"{row['p99']:.0f}" if row["p99"] is not None else "-"
        print(f"{name:<8} {row['served']:>7} {p50:>12} {p99:>12}")
    print(f"outcomes: {result['codes']}; lost (no response, no status): {result['lost']}")
    util = result["slot_utilization"]
    print(f"slot utilization: {util:.1%}" if util is not None else "slot utilization: -")
    print(f"tokens per tenant: {result['tokens_per_tenant']}; Jain: {result['jain_index']:.4f}")


if __name__ == "__main__":
    main()
