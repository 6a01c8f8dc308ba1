"""Autoscaling with the local actuator: how fast workers come and go.

    python -m bench.autoscaling [--clients 12] [--load-s 15] [--cooldown-s 10]

Scheduler, router and the local actuator run as processes; the actuator starts and drains
worker processes serving a simulated model (40 ms a token, 2 slots a worker, 20-token
requests). Two scenarios:

1. Load step: min 1, max 4 workers. `--clients` closed-loop streams for `--load-s`
   seconds, then one stream while the fleet scales down. Times: step → desired count up,
   → a new worker ready, → its first token; end of the step → first drain, → back at min.
   Counts every request's outcome (all must be OK).
2. Scale from zero: min 0. The fleet starts empty; one request arrives: its time to first
   token is the cold start. Then the model idles: time until the last worker is gone.

Prints a table and writes bench/results/autoscaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, scheduler_pb2_grpc, types_pb2

from bench.autoscale_scenario import load_step
from bench.sim_cluster import MODEL_ID, sim_cluster

RESULTS = Path(__file__).parent / "results" / "autoscaling.json"


def scheduler_lines(cooldown_s: float) -> str:
    return f"""
[scheduler.autoscaling]
enabled = true
warmup_s = 2.0  # a fresh system: nothing to wait for
target_utilization = 1.0
scale_up_cooldown_s = 3.0
scale_down_cooldown_s = {cooldown_s}
"""


def actuated_cluster(log_dir: Path, cooldown_s: float, min_workers: int, max_workers: int):
    """Scheduler, router and actuator; the actuator starts the workers (2 slots, 40 ms a
    token) between the bounds."""
    return sim_cluster(
        log_dir,
        workers=0,
        slots=2,
        step_ms=40.0,
        scheduler=scheduler_lines(cooldown_s),
        model=f"min_workers = {min_workers}\nmax_workers = {max_workers}",
        actuator=True,
    )


async def step_scenario(log_dir: Path, clients: int, load_s: float, cooldown_s: float) -> dict:
    cluster = actuated_cluster(log_dir, cooldown_s, 1, 4)
    cluster.start(ready_timeout_s=120)
    try:
        result = await load_step(cluster, clients=clients, load_s=load_s, trickle=1)
    finally:
        cluster.stop()
    return {
        "requests": result.requests,
        "outcomes": dict(result.outcomes),
        "peak_workers": result.peak_workers,
        "workers_serving": len(result.served_by),
        **result.timings(min_workers=1),
        "timeline": [(round(s.t, 2), s.desired, s.current, s.ready) for s in result.samples],
    }


async def zero_scenario(log_dir: Path, cooldown_s: float) -> dict:
    cluster = actuated_cluster(log_dir, cooldown_s, 0, 2)
    cluster.start(ready_timeout_s=120, models="")
    scheduler = f"127.0.0.1:{cluster.ports['scheduler']}"
    try:
        async with (
            grpc.aio.insecure_channel(cluster.router_address) as router_channel,
            grpc.aio.insecure_channel(scheduler) as scheduler_channel,
        ):
            router = router_pb2_grpc.RouterStub(router_channel)
            status = scheduler_pb2_grpc.SchedulerStub(scheduler_channel)
            before = await status.GetStatus(types_pb2.GetStatusRequest(), timeout=5)
            started = time.monotonic()
            first_token = None
            request = types_pb2.GenerateRequest(model_id=MODEL_ID, prompt="cold", max_tokens=20)
            async for message in router.Generate(request, timeout=120):
                if first_token is None and message.HasField("delta"):
                    first_token = time.monotonic() - started
            idle_at = time.monotonic()
            while True:
                now = await status.GetStatus(types_pb2.GetStatusRequest(), timeout=5)
                if not now.workers:
                    break
                await asyncio.sleep(0.2)
            to_zero = time.monotonic() - idle_at
    finally:
        cluster.stop()
    return {
        "workers_before": len(before.workers),
        "cold_start_first_token_s": first_token,
        "idle_to_zero_workers_s": to_zero,
    }


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--load-s", type=float, default=15.0)
    parser.add_argument("--cooldown-s", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        step_dir, zero_dir = Path(tmp, "step"), Path(tmp, "zero")
        step_dir.mkdir()
        zero_dir.mkdir()
        step = asyncio.run(step_scenario(step_dir, args.clients, args.load_s, args.cooldown_s))
        zero = asyncio.run(zero_scenario(zero_dir, args.cooldown_s))
    print(
        f"\nLoad step: {args.clients} clients for {args.load_s:.0f} s, "
        f"scale-down cool-down {args.cooldown_s:.0f} s"
    )
    print(f"requests {step['requests']}: {step['outcomes']}; peak workers {step['peak_workers']}")
    print("| transition | seconds |\n| --- | --- |")
    for key in (
        "step_to_desired_up_s",
        "step_to_new_worker_ready_s",
        "step_to_new_worker_first_token_s",
        "idle_to_first_drain_s",
        "idle_to_min_workers_s",
    ):
        print(f"| {key} | {_fmt(step[key])} |")
    print(f"\nScale from zero (workers before: {zero['workers_before']})")
    print(f"| cold_start_first_token_s | {_fmt(zero['cold_start_first_token_s'])} |")
    print(f"| idle_to_zero_workers_s | {_fmt(zero['idle_to_zero_workers_s'])} |")
    RESULTS.write_text(
        json.dumps({"args": vars(args), "load_step": step, "scale_from_zero": zero}, indent=2)
    )
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
