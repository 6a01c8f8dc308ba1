"""kill -9 of the scheduler under load: what happens to running and queued requests.

    python -m bench.scheduler_crash [--workers 2] [--streams 24] [--down 1.0]

Scheduler, router and `--workers` workers run as processes (`bench.sim_cluster`) serving a
simulated model (20 ms a token, 8 slots a worker, so with 24 clients some always wait in the
queue). Clients stream 100-token requests back to back; after `--kill-after` seconds the
scheduler gets SIGKILL and is started again `--down` seconds later (as the `make up`
supervisor or Kubernetes would). Counts requests completed (each checked for all its tokens),
failed with a status and lost (neither a full answer nor a status: must be 0), and measures,
from the kill: the first token of a request that was waiting in the queue then (the queue
moves again), and the time until the new scheduler shows every worker and its leases again.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, scheduler_pb2_grpc, types_pb2

from bench.failover import client
from bench.sim_cluster import sim_cluster


async def rebuilt(scheduler: str, workers: int, killed_at: float) -> float:
    """Seconds from the kill until the new scheduler knows every worker and holds leases."""
    async with grpc.aio.insecure_channel(scheduler) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        while True:
            try:
                status = await stub.GetStatus(types_pb2.GetStatusRequest(), timeout=1)
                if len(status.workers) == workers and status.active_leases:
                    return time.monotonic() - killed_at
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.02)


async def run(args, logs: Path) -> dict:
    cluster = sim_cluster(logs, workers=args.workers, slots=8, step_ms=20.0)
    cluster.start(ready_timeout_s=120)
    out: Counter = Counter()
    firsts: list[tuple[float, float]] = []
    stop = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(cluster.router_address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            clients = [
                asyncio.ensure_future(client(stub, n, stop, out, firsts))
                for n in range(args.streams)
            ]
            await asyncio.sleep(args.kill_after)
            cluster.procs["scheduler"].kill()
            killed_at = time.monotonic()
            await asyncio.sleep(args.down)
            cluster.restart("scheduler")
            table_s = await rebuilt(cluster.scheduler_address, args.workers, killed_at)
            await asyncio.sleep(args.after)
            stop.set()
            await asyncio.gather(*clients)
    finally:
        cluster.kill()
    waited = [first for started, first in firsts if started < killed_at < first]
    return {
        "outcomes": dict(out),
        "lost": out["lost"] + out["incomplete"],
        "queue_moves_again_s": min(waited) - killed_at if waited else None,
        "lease_table_rebuilt_s": table_s,
        "waited_through_the_crash": len(waited),
        "args": vars(args),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--kill-after", type=float, default=4.0)
    parser.add_argument("--down", type=float, default=1.0, help="seconds before the restart")
    parser.add_argument("--after", type=float, default=6.0, help="load after the restart")
    parser.add_argument("--out", default="bench/results/scheduler_crash.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        result = asyncio.run(run(args, Path(logs)))
    print(f"{'outcome':<34} {'requests':>8}")
    for outcome, count in sorted(result["outcomes"].items()):
        print(f"{outcome:<34} {count:>8}")
    print(f"{'lost (no full answer, no status)':<34} {result['lost']:>8}")
    lines = {
        "requests queued at the kill, served after it": result["waited_through_the_crash"],
        "kill -> scheduler back with every worker's leases (s)": result["lease_table_rebuilt_s"],
        "kill -> first token of a request queued at the kill (s)": result["queue_moves_again_s"],
    }
    for what, value in lines.items():
        print(f"{what}: {value if isinstance(value, int) else round(value or 0.0, 2)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
