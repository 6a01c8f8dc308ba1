"""kill -9 of a worker under load: what happens to the requests it was streaming.

    python -m bench.failover [--workers 4] [--streams 32]

Scheduler, router and `--workers` workers run as their own processes (`bench.sim_cluster`),
serving a simulated model (20 ms a token, 8 slots a worker). `--streams` clients each stream
100-token requests back to back; after `--kill-after` seconds one worker gets SIGKILL. Counts
requests completed, resumed on another worker (from the scheduler's leases-lost metric),
failed with a status, and lost (ended with neither a full response nor a status: must be 0),
checks every completed stream has all its tokens, and times how long the scheduler took to
reclaim the dead worker's leases (until GetStatus shows it gone with no lease on it). Prints
a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, scheduler_pb2_grpc, types_pb2

from bench.sim_cluster import MODEL_ID, sim_cluster

TOKENS = 100


async def client(
    stub, n: int, stop: asyncio.Event, out: Counter, firsts: list | None = None
) -> None:
    """Streams requests back to back until `stop`, counting outcomes in `out`; notes each
    request's (start, first token) monotonic times in `firsts` when given."""
    i = 0
    while not stop.is_set():
        request = types_pb2.GenerateRequest(
            model_id=MODEL_ID, prompt=f"client {n} request {i}", max_tokens=TOKENS
        )
        i += 1
        started, tokens, summary = time.monotonic(), 0, None
        try:
            async for message in stub.Generate(request, timeout=60):
                if message.HasField("delta"):
                    if not tokens and firsts is not None:
                        firsts.append((started, time.monotonic()))
                    tokens += message.delta.token_count
                else:
                    summary = message.summary
        except grpc.aio.AioRpcError as exc:
            out[f"failed:{exc.code().name}"] += 1
            continue
        if summary is None:
            out["lost"] += 1
        elif tokens != TOKENS or summary.completion_tokens != TOKENS:
            out["incomplete"] += 1
        else:
            out["completed"] += 1


async def reclaim_time(scheduler: str, victim_port: int, killed_at: float) -> float:
    """Seconds from the kill until the scheduler has dropped the worker and its leases."""
    async with grpc.aio.insecure_channel(scheduler) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        while True:
            status = await stub.GetStatus(types_pb2.GetStatusRequest(), timeout=5)
            if not any(w.address.endswith(f":{victim_port}") for w in status.workers):
                return time.monotonic() - killed_at
            await asyncio.sleep(0.005)


def leases_lost(metrics_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    for line in body.read().decode().splitlines():
        if line.startswith('inference_scheduler_leases_lost_total{reason="worker_lost"}'):
            return float(line.split()[-1])
    return 0.0


async def drive(cluster, streams: int, kill_after: float, run_for: float) -> dict:
    out: Counter[str] = Counter()
    stop = asyncio.Event()
    scheduler = f"127.0.0.1:{cluster.ports['scheduler']}"
    async with grpc.aio.insecure_channel(cluster.router_address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        clients = [asyncio.create_task(client(stub, n, stop, out)) for n in range(streams)]
        await asyncio.sleep(kill_after)
        cluster.procs["worker-0"].kill()
        killed_at = time.monotonic()
        reclaim_s = await reclaim_time(scheduler, cluster.worker_ports[0], killed_at)
        await asyncio.sleep(max(0.0, run_for - kill_after))
        stop.set()
        await asyncio.gather(*clients)
    return {
        "outcomes": dict(out),
        "resumed": leases_lost(cluster.metrics_ports["scheduler"]),
        "reclaim_ms": reclaim_s * 1000.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--kill-after", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default="bench/results/failover.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        cluster = sim_cluster(Path(logs), args.workers, slots=8, step_ms=20.0)
        cluster.start(ready_timeout_s=300)
        try:
            result = asyncio.run(drive(cluster, args.streams, args.kill_after, args.seconds))
        finally:
            cluster.kill()
    result.update(workers=args.workers, streams=args.streams, tokens=TOKENS)
    outcomes = result["outcomes"]
    failed = sum(v for k, v in outcomes.items() if k.startswith("failed"))
    print(f"{args.workers} workers, {args.streams} streams of {TOKENS} tokens; worker-0 killed")
    header = ("completed", "resumed", "failed", "lost", "incomplete", "reclaim ms")
    print("{:>10} {:>8} {:>7} {:>5} {:>11} {:>11}".format(*header))
    print(
        f"{outcomes.get('completed', 0):>10} {result['resumed']:>8.0f} {failed:>7} "
        f"{outcomes.get('lost', 0):>5} {outcomes.get('incomplete', 0):>11} "
        f"{result['reclaim_ms']:>11.1f}"
    )
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
