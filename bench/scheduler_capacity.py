"""What one scheduler core serves: its CPU per request at rising request rates.

    python -m bench.scheduler_capacity [--rates 300,1000,2500] [--seconds 10] [--baseline DIR]

The scheduler runs alone, as its own process (this checkout's, and `--baseline`'s in the same
run). This process plays both of its neighbours, without the token path between them:

- `--workers` simulated workers, each a real WorkerSession as `bench.fleet_host` keeps one
  (registration, quiet heartbeats listing the leases it runs, lease ends reported in a row);
- `--routers` routers, each its own connection and the router's own `SchedulerClient`.

Requests arrive as a Poisson process at each rate for `--seconds`. Each granted lease is held
`--hold-ms` by its worker, which then reports its end on its session: what a request costs the
scheduler (the ticket, the grant, the end) and nothing of the tokens' path, which the scheduler
never sees. Per rate it reports the requests served per second, the scheduler's CPU per
request (process CPU over the step, less its idle rate) and its cores, this process's cores
(the load's own limit on a small machine), and p50/p99 of the time to a grant as the router
sees it. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import psutil
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

from bench import write_report
from bench.control_plane import cpu_seconds
from bench.fleet import Fleet, wait_for_workers
from bench.fleet_host import Host, SimWorker, channel_to, session_forever
from bench.local_system import ROOT
from services.common.catalog import parse_catalog
from services.common.config import read_toml
from services.common.server import CHANNEL_OPTIONS, install_uvloop
from services.router.scheduler_client import SchedulerClient

TIMEOUT_S = 10.0


class Sides:
    """The simulated workers and routers around one scheduler."""

    def __init__(self, fleet: Fleet, routers: int, hold_s: float) -> None:
        spec = parse_catalog(read_toml(fleet.config)["models"])["sim"]
        workers = {
            f"sim-{i}": SimWorker(f"sim-{i}", f"gpu-{i}", spec) for i in range(fleet.args.workers)
        }
        self.host = Host(workers, "127.0.0.1:9")  # nobody presents these leases: no server
        # the workers' channel as theirs, the routers' as a router's
        self.channels = [channel_to(fleet.address)]
        self.channels += [
            grpc.aio.insecure_channel(fleet.address, options=CHANNEL_OPTIONS)
            for _ in range(routers)
        ]
        self.routers = [
            SchedulerClient(scheduler_pb2_grpc.SchedulerStub(c), 0.0, 100_000)
            for c in self.channels[1:]
        ]
        self.hold_s = hold_s
        self.sessions: list[asyncio.Task] = []

    async def start(self) -> None:
        stub = scheduler_pb2_grpc.SchedulerStub(self.channels[0])
        for worker in self.host.workers.values():
            self.sessions.append(asyncio.create_task(session_forever(self.host, worker, stub)))
        await wait_for_workers(stub, len(self.host.workers), timeout_s=60.0)

    async def close(self) -> None:
        for task in self.sessions:
            task.cancel()
        await asyncio.gather(*self.sessions, return_exceptions=True)
        for channel in self.channels:
            await channel.close()

    async def request(self, n: int, waits: list[float], codes: Counter) -> None:
        """One request: a lease acquired as a router does, held, its end reported."""
        ticket = scheduler_pb2.AcquireRequest(
            request_id=f"r{n}",
            model_id="sim",
            priority=types_pb2.PRIORITY_MEDIUM,
            tenant_id=f"tenant-{n % 8}",
            prompt_tokens=64,
            max_tokens=32,
        )
        started = time.perf_counter()
        try:
            grant = await self.routers[n % len(self.routers)].acquire(ticket, TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1
            return
        except Exception as exc:  # noqa: BLE001 - the router's own errors, counted by kind
            codes[type(exc).__name__] += 1
            return
        waits.append((time.perf_counter() - started) * 1000.0)
        codes["OK"] += 1
        worker = self.host.workers[grant.worker_id]
        worker.running[grant.lease_id] = asyncio.Event()
        asyncio.get_running_loop().call_later(self.hold_s, _end, worker, grant.lease_id)


def _end(worker: SimWorker, lease_id: str) -> None:
    worker.running.pop(lease_id, None)
    ended = scheduler_pb2.LeaseEnded(
        lease_id=lease_id,
        outcome=types_pb2.LEASE_OUTCOME_COMPLETED,
        prompt_tokens=64,
        completion_tokens=32,
    )
    worker.outbox.put_nowait(scheduler_pb2.WorkerSessionRequest(lease_ended=ended))


async def step(sides: Sides, scheduler: psutil.Process, rate: float, seconds: float) -> dict:
    """Poisson arrivals at `rate` for `seconds`; the scheduler's CPU over them."""
    me = psutil.Process()
    idle = cpu_seconds(scheduler)
    await asyncio.sleep(1.0)
    idle_rate = cpu_seconds(scheduler) - idle
    waits: list[float] = []
    codes: Counter[str] = Counter()
    rng, tasks, n = random.Random(11), [], 0
    before, mine, started = cpu_seconds(scheduler), cpu_seconds(me), time.perf_counter()
    next_at = started
    while (now := time.perf_counter()) < started + seconds:
        while next_at <= now:
            tasks.append(asyncio.create_task(sides.request(int(rate) * 1000_000 + n, waits, codes)))
            n += 1
            next_at += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, min(next_at - now, 0.005)))
    await asyncio.gather(*tasks)
    await asyncio.sleep(sides.hold_s + 0.2)  # the last ends reach the scheduler
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(scheduler) - before - idle_rate * elapsed
    served = codes["OK"]
    waits.sort()
    return {
        "rate": rate,
        "served_per_s": served / seconds,
        "scheduler_us_per_request": cpu * 1e6 / max(1, served),
        "scheduler_cores": cpu / elapsed,
        "load_cores": (cpu_seconds(me) - mine) / elapsed,
        "grant_ms_p50": statistics.median(waits) if waits else None,
        "grant_ms_p99": waits[int(len(waits) * 0.99)] if waits else None,
        "codes": dict(codes),
    }


async def measure(args, root: Path, logs: Path) -> list[dict]:
    fleet_args = argparse.Namespace(
        workers=args.workers, hosts=0, slots=args.slots, step_ms=1.0, tokens=32, queue=100_000
    )
    fleet = Fleet(fleet_args, logs, root)
    fleet.start()
    sides = Sides(fleet, args.routers, args.hold_ms / 1000.0)
    try:
        await sides.start()
        await step(sides, fleet.scheduler_process(), 100.0, 2.0)  # warm up
        rows = []
        for rate in args.rates:
            rows.append(await step(sides, fleet.scheduler_process(), rate, args.seconds))
            print_row(root, rows[-1])
        return rows
    finally:
        await sides.close()
        fleet.stop()


def print_row(root: Path, r: dict) -> None:
    print(
        f"{root!s:<16} {r['rate']:>6.0f} {r['served_per_s']:>8.0f} "
        f"{r['scheduler_us_per_request']:>8.0f} {r['scheduler_cores']:>6.2f} "
        f"{r['load_cores']:>6.2f} {r['grant_ms_p50'] or 0:>7.2f} {r['grant_ms_p99'] or 0:>7.2f}"
        f"  {r['codes']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="300,1000,2500", help="requests per second, in steps")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--slots", type=int, default=256, help="per worker")
    parser.add_argument("--hold-ms", type=float, default=50.0, help="a lease's time on its worker")
    parser.add_argument("--routers", type=int, default=4)
    parser.add_argument("--baseline", default="", help="another checkout, measured in the same run")
    parser.add_argument("--out", default="bench/results/scheduler_capacity.json")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    install_uvloop()
    sides = {"this": ROOT, **({"baseline": Path(args.baseline)} if args.baseline else {})}
    print(
        f"{'scheduler':<16} {'rate':>6} {'served/s':>8} {'µs/req':>8} {'cores':>6} "
        f"{'load':>6} {'p50 ms':>7} {'p99 ms':>7}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, root in sides.items():
            (Path(folder) / name).mkdir()
            results[name] = asyncio.run(measure(args, root, Path(folder) / name))
    write_report(args.out, {"args": vars(args), **results})


if __name__ == "__main__":
    main()
