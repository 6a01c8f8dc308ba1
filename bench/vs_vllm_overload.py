"""At 3× overload, side by side: vLLM's own OpenAI server (as shipped, and with
`--scheduling-policy priority`) against our stack with its worker on vLLM, the same model and
engine arguments, the same offered load, one run.

    python -m bench.vs_vllm_overload [--overload 3] [--seconds 60] [--patience 30]

Needs `make setup-vllm`. First the capacity: requests/s that vLLM's server completes with as
many clients as it has sequence slots, back to back. Then each side, alone on the machine,
gets the same open-loop load (bench.overload_load) at `--overload` × that rate: two tenants,
`flood` sending 87% of the requests and `quiet` 13% (0.4× capacity: less than half, so its
fair share is all it asks), each request high (10%), medium (30%) or low (60%). vLLM's server
knows no tenants; as shipped it takes no priority, and with the priority policy it takes
ours as vLLM's integer (high -1, medium 0, low 1). Our stack knows the tenants by their API
keys and is configured as an operator bounding the wait would: a queue of 128 requests and
requests' deadline 2 s inside the clients' patience. Prints, per side: what became of the
requests, high priority's TTFT, each tenant's tokens and the quiet tenant's share of its
fair share; writes bench/results/vs_vllm_overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import subprocess
import tempfile
import tomllib
from pathlib import Path

import tomli_w

from bench.local_system import ROOT, LocalSystem, free_port
from bench.overload_load import MODEL, Caller, closed_loop, open_loop
from bench.overload_summary import print_table, summarize
from bench.vs_vllm_server import CONFIG, serve_command, wait_healthy
from scripts.engine_config import move
from services.common.catalog import parse_catalog
from services.common.engine_python import worker_python
from services.gpu_worker.engines.loader import model_folder
from services.gpu_worker.engines.vllm_setup import configure_cpu

MIX = {"high": 0.1, "medium": 0.3, "low": 0.6}
QUIET_SHARE_OF_CAPACITY = 0.4
QUEUE_CAPACITY = 128
VLLM_PRIORITY = {"high": -1, "medium": 0, "low": 1}
DEADLINE_MARGIN_S = 2.0  # requests' deadline: this much inside the clients' patience
KEYS = {"flood": "flood-key-0123456789", "quiet": "quiet-key-0123456789"}


def callers(overload: float, with_keys: bool) -> list[Caller]:
    quiet = QUIET_SHARE_OF_CAPACITY / overload
    shares = {"flood": 1.0 - quiet, "quiet": quiet}
    return [
        Caller(name, {"Authorization": f"Bearer {KEYS[name]}"} if with_keys else {}, share)
        for name, share in shares.items()
    ]


async def vllm_side(spec, folder: Path, args, work: Path, policy: str, rate: float | None):
    """vLLM's server with `policy`; measures the capacity first when `rate` is None."""
    port = free_port()
    command = serve_command(spec, folder, port)
    if policy == "priority":
        command += ["--scheduling-policy", "priority"]
    server = start(command, work / f"vllm-{policy}.log")
    try:
        await asyncio.to_thread(wait_healthy, f"http://127.0.0.1:{port}/health", 600, server)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        capacity = None
        if rate is None:
            anyone = Caller("capacity", {}, 1.0)
            capacity = await closed_loop(url, anyone, spec.max_slots, args.capacity_seconds)
            rate = args.overload * capacity
        field = VLLM_PRIORITY.get if policy == "priority" else None
        shots = await open_loop(
            url, callers(args.overload, False), MIX, rate, args.seconds, args.patience, field
        )
        return capacity, rate, shots
    finally:
        server.terminate()
        server.wait(timeout=60)


def start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)


def stack_config(raw: dict, work: Path) -> Path:
    """The local config on vLLM, with the two tenants' keys."""
    raw = json.loads(json.dumps(raw))
    raw["router"]["tenants"] = [
        {"id": name, "api_key_sha256": hashlib.sha256(key.encode()).hexdigest()}
        for name, key in KEYS.items()
    ]
    path = work / "config-overload.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


async def stack_side(config: Path, args, work: Path, rate: float):
    env = {
        "INFERENCE_CONFIG": str(config),
        "WORKER_MODELS": MODEL,
        "SCHEDULER_ADMISSION_QUEUE_CAPACITY": str(QUEUE_CAPACITY),
        "ROUTER_DEFAULT_DEADLINE_S": str(args.patience - DEADLINE_MARGIN_S),
    }
    system = LocalSystem(
        work, workers=1, env=env, worker_launch=lambda _: (worker_python("vllm"), {})
    )
    await asyncio.to_thread(system.start, ready_timeout_s=600, models=MODEL)
    try:
        url = f"http://127.0.0.1:{system.http_port}/v1/chat/completions"
        return await open_loop(
            url, callers(args.overload, True), MIX, rate, args.seconds, args.patience, str
        )
    finally:
        system.stop()


async def run(args: argparse.Namespace, work: Path) -> dict:
    configure_cpu()  # the OpenMP binding our engine gives vLLM, for vLLM's server too
    raw = tomllib.loads(CONFIG.read_text())
    move(raw, "vllm")
    spec = parse_catalog(raw["models"])[MODEL]
    folder = model_folder(spec, ROOT / ".cache" / "models")
    capacity, rate, fcfs = await vllm_side(spec, folder, args, work, "fcfs", None)
    _, _, priority = await vllm_side(spec, folder, args, work, "priority", rate)
    ours = await stack_side(stack_config(raw, work), args, work, rate)
    sides = {"vllm_server": fcfs, "vllm_server_priority": priority, "ours": ours}
    return {
        "capacity_requests_per_s": capacity,
        "offered_requests_per_s": rate,
        "overload": args.overload,
        "seconds": args.seconds,
        "patience_s": args.patience,
        "sides": {name: summarize(shots, args.patience) for name, shots in sides.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--overload", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--patience", type=float, default=30.0)
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--out", default="bench/results/vs_vllm_overload.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = asyncio.run(run(args, Path(work)))
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
