"""A fleet simulation: the real scheduler process driving 1,000 simulated GPU workers.

    python -m bench.fleet [--workers 1000] [--hosts 2] [--seconds 60] [--loads 0.5,1,2]

The scheduler runs as its own process, as in production. The workers are simulated in
`--hosts` processes (bench/fleet_host.py): each a real WorkerSession with heartbeats, taking
real signed leases, with the simulated engine's timing. The load comes from this process
through the router's own lease path (`services.common.leased_run.LeasedRun`: Acquire, run
the lease on its worker, resume when preempted): Poisson arrivals of mixed priorities
(20 % high, 50 % medium, 30 % low) and 8 tenants of equal weight, at each load factor times
the fleet's capacity, for `--seconds` each. Per load it reports: decisions (leases granted)
per second, the scheduler's CPU, queue wait p50/p99 per priority, slot utilization, Jain's
index of the tokens served per tenant, and requests shed and lost (no answer and no status).
Writes bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import psutil
from inference.v1 import scheduler_pb2_grpc, types_pb2

from bench.local_system import free_port, with_own_protos
from services.common.errors import ResourceExhausted, ServiceError
from services.common.leased_run import LeasedRun, generate_ticket
from services.common.status import code_for
from services.common.worker_channels import WorkerChannels
from services.router.scheduler_client import SchedulerClient
from services.scheduler.core.fairness import jain_index

ROOT = Path(__file__).resolve().parents[1]
PRIORITIES = [(types_pb2.PRIORITY_HIGH, 0.2), (types_pb2.PRIORITY_MEDIUM, 0.5)]
PRIORITIES += [(types_pb2.PRIORITY_LOW, 0.3)]
TENANTS = [f"tenant-{i}" for i in range(8)]
DEADLINE_S = 60.0


def config_text(slots: int, step_ms: float, tokens: int, queue: int) -> str:
    return f"""
[scheduler]
heartbeat_interval_ms = 1000
[scheduler.admission]
queue_capacity = {queue}
[scheduler.dispatch]
recovery_s = 0.0
[[models]]
id = "sim"
engine = "simulated"
max_context_tokens = 4096
max_output_tokens = 1024
default_max_tokens = {tokens}
max_slots = {slots}
[models.simulation]
gpu_type = "sim"
[models.simulation.profiles.sim]
prefill_tokens_per_s = 100000.0
decode_ms_per_step = {step_ms}
batch_slowdown = 0.0
kv_capacity_tokens = 10000000
"""


class Fleet:
    """The scheduler process and the host processes of the simulated workers."""

    def __init__(self, args: argparse.Namespace, work: Path, root: Path = ROOT) -> None:
        self.args = args
        self.root = root  # the checkout whose scheduler runs (another one: a baseline)
        self.config = work / "fleet.toml"
        self.config.write_text(config_text(args.slots, args.step_ms, args.tokens, args.queue))
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.logs = work

    def start(self) -> None:
        py = [sys.executable, "-u", "-m"]
        self._spawn(
            "scheduler",
            [
                *py,
                *("services.scheduler", "--config", str(self.config), "--listen", self.address),
                *("--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--log-level", "warning"),
            ],
        )
        per_host = -(-self.args.workers // max(1, self.args.hosts))  # none: workers elsewhere
        for h in range(self.args.hosts):
            count = min(per_host, self.args.workers - h * per_host)
            self._spawn(
                f"host-{h}",
                [
                    *py,
                    *("bench.fleet_host", "--config", str(self.config)),
                    *("--scheduler", self.address, "--workers", str(count)),
                    *("--first", str(h * per_host)),
                    *(
                        ["--channel-per-worker"]
                        if getattr(self.args, "own_channels", False)
                        else []
                    ),
                ],
                cwd=ROOT,  # this checkout's workers; they speak as the scheduler accepts them
            )

    def _spawn(self, name: str, command: list[str], cwd: Path | None = None) -> None:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.processes.append(
            subprocess.Popen(
                command,
                cwd=cwd or self.root,
                env=with_own_protos(cwd or self.root, dict(os.environ)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def scheduler_process(self) -> psutil.Process:
        return psutil.Process(self.processes[0].pid)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


async def wait_for_workers(stub, count: int, timeout_s: float = 300.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            status = await stub.GetStatus(types_pb2.GetStatusRequest(), timeout=10)
            if len(status.workers) >= count:
                return time.monotonic() - started
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(1.0)
    raise TimeoutError(f"fewer than {count} workers registered in {timeout_s} s")


class Load:
    """One load step: arrivals, outcomes and the samples of the fleet's state."""

    def __init__(self, runner: LeasedRun, rate: float, tokens: int) -> None:
        self.runner, self.rate, self.tokens = runner, rate, tokens
        self.waits: dict[str, list[float]] = defaultdict(list)
        self.codes: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.utilization: list[float] = []
        self.sent = 0
        self.rng = random.Random(7)
        self.window: dict[str, float] = {}  # the figures of the arrivals window
        self.details: dict[str, str] = {}  # a message of each status seen
        self.on_window_end = lambda: None

    async def one(self, i: int) -> None:
        priority = self.rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0]
        tenant = self.rng.choice(TENANTS)
        request = types_pb2.GenerateRequest(
            request_id=f"r{i}", model_id="sim", prompt="p" * 64, max_tokens=self.tokens
        )
        request.priority = priority
        ticket = generate_ticket(request, tenant)
        summary = None
        try:
            stream = self.runner.generate(ticket, request, time.monotonic() + DEADLINE_S)
            async for message in stream:
                if message.HasField("summary"):
                    summary = message.summary
            self.codes["OK" if summary is not None else "LOST"] += 1
        except grpc.aio.AioRpcError as exc:
            self.codes[exc.code().name] += 1
            self.details.setdefault(exc.code().name, exc.details())
        except ServiceError as exc:  # what the router would answer with its status
            self.codes[code_for(exc).name] += 1
            self.details.setdefault(code_for(exc).name, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug of the driver, counted, not hidden
            self.codes[f"ERROR {type(exc).__name__}"] += 1
        if summary is not None:
            name = types_pb2.Priority.Name(priority).removeprefix("PRIORITY_").lower()
            self.waits[name].append(summary.queue_time_ms)
            self.served[tenant] += summary.completion_tokens

    async def run(self, seconds: float, status_stub) -> None:
        tasks, started = [], time.monotonic()
        sampler = asyncio.create_task(self.sample(status_stub, started + seconds))
        next_at = started
        while (now := time.monotonic()) < started + seconds:
            if now >= next_at:
                tasks.append(asyncio.create_task(self.one(self.sent)))
                self.sent += 1
                next_at += self.rng.expovariate(self.rate)
                continue
            await asyncio.sleep(min(0.01, next_at - now))
        await sampler
        self.on_window_end()
        await asyncio.wait(tasks, timeout=DEADLINE_S + 10)
        self.codes["LOST"] += sum(1 for t in tasks if not t.done())

    async def sample(self, stub, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(2.0)
            try:
                status = await stub.GetStatus(types_pb2.GetStatusRequest(), timeout=10)
            except grpc.aio.AioRpcError:
                continue
            if status.total_slots:
                self.utilization.append(status.active_leases / status.total_slots)


def scheduler_shed(port: int) -> float:
    """Requests the scheduler shed so far (its inference_scheduler_shed_total)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    prefix = "inference_scheduler_shed_total{"
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(
    fleet: Fleet, factor: float, capacity: float, status_stub, runner, granted: list[int]
) -> dict:
    """One load factor for `--seconds` (then its requests finish). Decisions are counted
    over the arrivals window, where they are sustained."""
    args = fleet.args
    process = fleet.scheduler_process()
    cpu0, granted0, t0 = sum(process.cpu_times()[:2]), granted[0], time.time()
    shed0 = scheduler_shed(fleet.metrics_port)
    load = Load(runner, capacity * factor, args.tokens)
    load.on_window_end = lambda: load.window.update(
        cpu=sum(process.cpu_times()[:2]) - cpu0,
        granted=granted[0] - granted0,
        wall=time.time() - t0,
    )
    await load.run(args.seconds, status_stub)
    wall = load.window["wall"]
    cpu = load.window["cpu"]
    decisions = load.window["granted"]
    return {
        "load": factor,
        "offered_rps": capacity * factor,
        "sent": load.sent,
        "decisions_per_s": decisions / wall,
        "scheduler_cpu_cores": cpu / wall,
        "queue_wait_ms": {
            name: {"p50": percentile(w, 0.5), "p99": percentile(w, 0.99), "served": len(w)}
            for name, w in sorted(load.waits.items())
        },
        "slot_utilization": statistics.fmean(load.utilization) if load.utilization else None,
        "jain_index": jain_index([load.served[t] for t in TENANTS]),
        "codes": dict(load.codes),
        "details": load.details,
        "shed": load.codes.get("RESOURCE_EXHAUSTED", 0),
        "shed_by_scheduler": scheduler_shed(fleet.metrics_port) - shed0,
        "lost": load.codes.get("LOST", 0),
    }


async def simulate(fleet: Fleet) -> dict:
    args = fleet.args
    service_s = args.tokens * args.step_ms / 1000.0
    capacity = args.workers * args.slots / service_s
    async with grpc.aio.insecure_channel(fleet.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        registered_in = await wait_for_workers(stub, args.workers)
        granted = [0]
        acquire_codes: Counter[str] = Counter()  # statuses Acquire itself answered

        channels = [grpc.aio.insecure_channel(fleet.address) for _ in range(args.routers)]
        cap = max(1, args.max_waiting // args.routers)  # the routers share the scheduler's
        routers = [SchedulerClient(scheduler_pb2_grpc.SchedulerStub(c), 0.0, cap) for c in channels]

        async def acquire(ticket, timeout_s: float):
            """Scheduler.Acquire, as a router calls it; counts the decisions."""
            try:  # each simulated router has its own connection to the scheduler
                router = routers[hash(ticket.request_id) % len(routers)]
                grant = await router.acquire(ticket, timeout_s)
            except grpc.aio.AioRpcError as exc:
                acquire_codes[exc.code().name] += 1
                raise
            except ResourceExhausted as exc:
                capped = "waiting for a lease already" in exc.message
                acquire_codes["RESOURCE_EXHAUSTED" + (" (router cap)" if capped else "")] += 1
                raise
            except ServiceError as exc:  # a refusal on the ticket stream, as its error
                acquire_codes[f"{code_for(exc).name}: {exc.message}"] += 1
                raise
            granted[0] += 1  # one decision: a lease granted
            return grant

        runner = LeasedRun(acquire, WorkerChannels(), max_resumes=3)
        rows = []
        for factor in args.loads:
            before = Counter(acquire_codes)
            rows.append(await run_load(fleet, factor, capacity, stub, runner, granted))
            rows[-1]["acquire_errors"] = dict(acquire_codes - before)
            print_row(rows[-1])
            await asyncio.sleep(args.tokens * args.step_ms / 1000.0)  # the fleet drains
        for extra in channels:
            await extra.close()
    return {
        "workers": args.workers,
        "hosts": args.hosts,
        "slots_per_worker": args.slots,
        "service_s": service_s,
        "capacity_rps": capacity,
        "seconds_per_load": args.seconds,
        "registered_in_s": registered_in,
        "rows": rows,
    }


def print_row(r: dict) -> None:
    waits = " ".join(
        f"{name} {w['p50'] or 0:.0f}/{w['p99'] or 0:.0f}" for name, w in r["queue_wait_ms"].items()
    )
    util = r["slot_utilization"]
    print(
        f"{r['load']:>4}× {r['offered_rps']:>6.0f} {r['decisions_per_s']:>8.1f} "
        f"{r['scheduler_cpu_cores']:>6.2f} {util if util is None else round(util, 3)!s:>6} "
        f"{r['jain_index'] or 0:>6.3f} {r['shed']:>6} {r['lost']:>5}  wait p50/p99 ms: {waits}"
        f"  {r['codes']} (of them from Acquire: {r['acquire_errors']})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--step-ms", type=float, default=100.0)
    parser.add_argument("--queue", type=int, default=4096)
    parser.add_argument("--routers", type=int, default=4, help="connections to the scheduler")
    parser.add_argument(
        "--max-waiting",
        type=int,
        default=1000,
        help="Acquire calls all routers together keep waiting (router.max_waiting_per_scheduler)",
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--loads", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--out", default="bench/results/fleet.json")
    parser.add_argument("--logs", default="", help="keep the processes' logs here")
    args = parser.parse_args()
    args.loads = args.loads or [0.5, 1.0, 2.0]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.logs or scratch)
        work.mkdir(parents=True, exist_ok=True)
        fleet = Fleet(args, work)
        fleet.start()
        try:
            print(
                f"{'load':>5} {'rps':>6} {'dec/s':>8} {'cpu':>6} {'util':>6} {'jain':>6}"
                f" {'shed':>6} {'lost':>5}"
            )
            result = asyncio.run(simulate(fleet))
        finally:
            fleet.stop()
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
