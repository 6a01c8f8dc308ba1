"""What the control plane costs per unit of work, and where it goes.

    python -m bench.control_plane [--seconds 15] [--streams 32] [--workers 1000,2000]

1. **A request**: scheduler, router and one worker as processes (`bench.sim_cluster`: a
   simulated model with 1 ms steps and 64 slots), `--streams` closed-loop clients of 32-token
   requests through the router for `--seconds`. Reports the scheduler's and the router's CPU
   per request and the router's per relayed message (process CPU over the run, less what each
   burns idle), and where it goes: then both processes are sampled with py-spy (native frames
   too, so mypyc's, Cython's and upb's code shows) under the same load, and each sample is
   charged to the first frame, from the innermost, that belongs to a part (the
   core, protobuf, gRPC, asyncio, lease signing, tracing, metrics, logging, ...).
2. **A worker**: the scheduler alone hearing `--workers` simulated workers
   (`bench.fleet_host`: real sessions, each on a connection of its own, a heartbeat interval
   of a second, nothing changing) with no requests: its CPU per worker and interval (what a
   heartbeat cost when every interval had one; with quiet heartbeats, the few that go and the
   transport's pings), and where it goes.

`--baseline DIR` measures the services of another checkout too, in the same run (for example
the revision before a change: `git worktree add /tmp/before <rev>`, then `make core` there).

Prints tables and writes JSON. CPU figures are process CPU time: they hold on a busy machine
better than wall time, but share the cores with the load.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import psutil
from inference.v1 import scheduler_pb2_grpc

from bench import write_report
from bench.fleet import Fleet, wait_for_workers
from bench.local_system import ROOT
from bench.sim_cluster import sim_cluster
from bench.token_path import Paths, run_one

PY_SPY = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "py-spy")
# a sample goes to the first of these (innermost frame first) its stack passes through
PARTS = (
    ("lease signing", ("lease_token.py", "cryptography")),
    ("protobuf", ("google/protobuf", "_pb2", "upb")),
    ("tracing", ("opentelemetry", "common/tracing.py")),
    ("metrics", ("prometheus_client", "/metrics.py")),
    ("logging", ("logging/", "common/logs.py")),
    ("scheduler core", ("scheduler/core/", "scheduler_core__mypyc", "CPyDef_")),
    (
        "coordinator, servicer, convert",
        (
            "scheduler/coordinator.py",
            "scheduler/servicer.py",
            "scheduler/convert.py",
            "scheduler/sessions.py",
        ),
    ),
    (
        "router: door, validation, admission",
        (
            "router/door.py",
            "router/validation.py",
            "router/admission.py",
            "router/ratelimit.py",
            "router/auth.py",
            "router/tenants.py",
            "router/prompt_blocks.py",
            "tokenizers",
        ),
    ),
    (
        "router: leased run and relay",
        (
            "common/leased_run.py",
            "router/servicer.py",
            "common/worker_channels.py",
            "router/scheduler_client.py",
            "router/pools.py",
        ),
    ),
    ("gRPC", ("grpc/", "grpc_", "cygrpc")),
    ("asyncio, uvloop", ("asyncio/", "uvloop")),
    ("garbage collection", ("gc_tuning", "<gc>")),
)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def start_profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            PY_SPY,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "100",
            "--format",
            "raw",
            "--native",  # (mypyc's compiled core, gRPC's Cython, protobuf's upb); pauses it
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def shares(profile: Path) -> dict[str, float]:
    """Each part's share of the samples in a py-spy raw (collapsed) profile."""
    counts: Counter[str] = Counter()
    if not profile.exists():
        return {}
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")[::-1]  # innermost first
        counts[
            next(
                (
                    part
                    for frame in frames
                    for part, marks in PARTS
                    if any(m in frame for m in marks)
                ),
                "other",
            )
        ] += int(count)
    total = sum(counts.values()) or 1
    return {part: n / total for part, n in counts.most_common()}


async def drive(paths: Paths, streams: int, seconds: float) -> dict[str, int]:
    """`streams` closed-loop clients of 32-token requests for `seconds`."""
    done = {"requests": 0, "messages": 0}
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            _, messages, _ = await run_one(paths, "stack", 32)
            done["requests"] += 1
            done["messages"] += messages

    await asyncio.gather(*(client() for _ in range(streams)))
    return done


async def request_costs(args, logs: Path, root: Path = ROOT) -> dict:
    system = sim_cluster(logs / "requests", 1, slots=64, step_ms=1.0, flush_ms=0.0, root=root)
    system.start(ready_timeout_s=120)
    paths = Paths(system, direct_calls=False)
    procs = {n: psutil.Process(system.procs[n].pid) for n in ("scheduler", "router")}
    try:
        await asyncio.gather(*(run_one(paths, "stack", 32) for _ in range(args.streams)))
        idle = {n: cpu_seconds(p) for n, p in procs.items()}
        await asyncio.sleep(2.0)
        idle_rate = {n: (cpu_seconds(p) - idle[n]) / 2.0 for n, p in procs.items()}
        before = {n: cpu_seconds(p) for n, p in procs.items()}
        started = time.perf_counter()
        done = await drive(paths, args.streams, args.seconds)
        elapsed = time.perf_counter() - started
        cpu = {n: cpu_seconds(p) - before[n] - idle_rate[n] * elapsed for n, p in procs.items()}
        profilers = [
            start_profiler(p.pid, args.seconds, logs / f"{n}.txt") for n, p in procs.items()
        ]
        await drive(paths, args.streams, args.seconds)  # profiled apart: py-spy pauses them
        for profiler in profilers:
            profiler.wait(60)
    finally:
        await paths.close()
        system.stop()
    requests = max(1, done["requests"])
    return {
        "requests": done["requests"],
        "requests_per_s": done["requests"] / elapsed,
        "messages_per_request": done["messages"] / requests,
        "scheduler_us_per_request": cpu["scheduler"] * 1e6 / requests,
        "router_us_per_request": cpu["router"] * 1e6 / requests,
        "router_us_per_message": cpu["router"] * 1e6 / max(1, done["messages"]),
        "scheduler_parts": shares(logs / "scheduler.txt"),
        "router_parts": shares(logs / "router.txt"),
    }


async def heartbeat_costs(workers: int, args, logs: Path, root: Path = ROOT) -> dict:
    fleet_args = argparse.Namespace(
        workers=workers, hosts=2, slots=8, step_ms=10.0, tokens=16, queue=1000, own_channels=True
    )
    work = logs / f"fleet-{workers}"
    work.mkdir()
    fleet = Fleet(fleet_args, work, root)
    fleet.start()
    try:
        async with grpc.aio.insecure_channel(fleet.address) as channel:
            await wait_for_workers(scheduler_pb2_grpc.SchedulerStub(channel), workers)
        await asyncio.sleep(3.0)  # registrations settle
        process = fleet.scheduler_process()
        before, started = cpu_seconds(process), time.perf_counter()
        await asyncio.sleep(args.seconds)
        cpu, elapsed = cpu_seconds(process) - before, time.perf_counter() - started
        start_profiler(process.pid, args.seconds, work / "scheduler.txt").wait(args.seconds + 60)
    finally:
        fleet.stop()
    beats = workers * elapsed  # one a second each
    return {
        "workers": workers,
        "scheduler_cores": cpu / elapsed,
        "us_per_heartbeat": cpu * 1e6 / beats,  # per worker and interval
        "parts": shares(work / "scheduler.txt"),
    }


def print_parts(title: str, total_us: float, parts: dict[str, float]) -> None:
    print(f"  {title}: {total_us:.0f} µs")
    for part, share in parts.items():
        print(f"    {part:<38} {share:>6.1%} {share * total_us:>8.0f} µs")


def measure_side(args, logs: Path, root: Path) -> dict:
    """Both measures, on the services of the checkout at `root`."""
    logs.mkdir()
    requests = asyncio.run(request_costs(args, logs, root)) if args.streams else None
    fleets = [
        asyncio.run(heartbeat_costs(int(w), args, logs, root)) for w in args.workers.split(",") if w
    ]
    return {"root": str(root), "requests": requests, "fleets": fleets}


def print_side(name: str, side: dict) -> None:
    r = side["requests"]
    if r is not None:
        print(
            f"{name}: {r['requests']} requests at {r['requests_per_s']:.0f}/s, "
            f"{r['messages_per_request']:.1f} messages each"
        )
        print_parts(
            "scheduler CPU per request", r["scheduler_us_per_request"], r["scheduler_parts"]
        )
        print_parts("router CPU per request", r["router_us_per_request"], r["router_parts"])
        print(f"  router CPU per relayed message: {r['router_us_per_message']:.0f} µs")
    for f in side["fleets"]:
        print(
            f"{name}: {f['workers']} workers, a heartbeat a second each: "
            f"{f['scheduler_cores']:.2f} of a core"
        )
        print_parts(
            "scheduler CPU per worker and heartbeat interval", f["us_per_heartbeat"], f["parts"]
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--streams", type=int, default=32, help="0: no request measure")
    parser.add_argument("--workers", default="1000,2000", help="empty: no worker measure")
    parser.add_argument("--baseline", default="", help="another checkout, measured in the same run")
    parser.add_argument("--out", default="bench/results/control_plane.json")
    args = parser.parse_args()
    sides = {"this": ROOT, **({"baseline": Path(args.baseline)} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as folder:
        results = {
            name: measure_side(args, Path(folder) / name, root) for name, root in sides.items()
        }
    for name, side in results.items():
        print_side(name, side)
    write_report(args.out, {"args": vars(args), **results})


if __name__ == "__main__":
    main()
