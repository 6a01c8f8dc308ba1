"""Machine instructions one scheduling decision takes, counted with callgrind: deterministic,
where `bench.scheduler_core`'s clock swings with the machine.

    python -m bench.scheduler_instructions [--queued 2000] [--workers 256] [--decisions 1000]

The same decisions as `bench.scheduler_core` (a lease ends, the next request is granted, the
preemption check runs), on a fake clock, counted only inside `end_lease` (callgrind collects
inside `operator.call`), for the compiled core and the core from source (`SCHEDULER_CORE`).
Needs valgrind; prints a table and writes bench/results/scheduler_instructions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def decide_under_callgrind(queued: int, workers: int, decisions: int) -> None:
    """Runs under callgrind: `decisions` decisions, each inside operator.call."""
    import itertools
    import random
    import time

    ticks = itertools.count()
    time.monotonic = lambda: next(ticks) * 2e-6  # the same clock readings every run
    from bench.scheduler_core import build, decide

    core = build(queued, workers)
    leases, rng = core.leases(), random.Random(2)
    for _ in range(decisions):
        decide(core, leases, rng)


def count(build: str, args: argparse.Namespace) -> float:
    """Instructions per decision with the core `build` ('compiled' or 'python')."""
    env = os.environ | {"PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("SCHEDULER_CORE", None)
    if build == "python":
        env["SCHEDULER_CORE"] = "python"
    with tempfile.TemporaryDirectory() as temp:
        command = ["valgrind", "--tool=callgrind", "--collect-atstart=no"]
        command += ["--toggle-collect=_operator_call*", f"--callgrind-out-file={temp}/out"]
        command += [sys.executable, "-m", "bench.scheduler_instructions", "--decide"]
        command += [str(args.queued), str(args.workers), str(args.decisions)]
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1)) / args.decisions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queued", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=256)
    parser.add_argument("--decisions", type=int, default=1000)
    parser.add_argument("--decide", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/scheduler_instructions.json")
    args = parser.parse_args()
    if args.decide:
        decide_under_callgrind(*args.decide)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind")
    from services.scheduler import core

    builds = ["compiled", "python"] if core.BUILD == "compiled" else ["python"]
    rows = {b: count(b, args) for b in builds}
    print(f"{args.queued} queued, {args.workers} workers, {args.decisions} decisions")
    print(f"{'core':>10} {'instructions per decision':>26}")
    for build, per_decision in rows.items():
        print(f"{build:>10} {per_decision:>26,.0f}")
    result = {"queued": args.queued, "workers": args.workers, "per_decision": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
