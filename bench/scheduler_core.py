"""Cost of one scheduling decision in the pure core, by queue length.

    python -m bench.scheduler_core [--workers 256] [--out bench/results/scheduler_core.json]

W workers (256, then 1,024 and 4,096 at 10,000 queued) with 4 slots each for 4 models, every
slot held; the queue holds N requests (1,000, 10,000, 100,000) over
3 priorities and 8 tenants. One decision = `end_lease()`: a lease is released, the next
request is picked and granted a lease, and the preemption check runs (fairness, aging, KV
fit and worker choice included: the core's one outcome for that change). The cost should
not grow with N: only lane heads are looked at. Every request has a deadline 10 minutes out,
as a router sets one.

The garbage collector runs as in the scheduler process (services.scheduler.gc_tuning). The
core runs as `make core` built it (compiled with mypyc; services.scheduler.compiled_core)
unless `SCHEDULER_CORE=python` asks for its source; the output's first line says which.

It also times the periodic sweep (`tick()`: silent workers, unstarted leases, late and cold
requests, autoscaling) after the decisions, with every worker just heard from: the median
of 5, in milliseconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import operator
import random
import statistics
import time
from pathlib import Path

from services.scheduler import core as core_package
from services.scheduler.core.admission import AdmissionRules
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.settings import CoreSettings, DispatchRules
from services.scheduler.core.types import (
    PRIORITIES,
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    Outcome,
    Priority,
    Ticket,
    Usage,
)
from services.scheduler.gc_tuning import tune_collector

MODELS = [f"model-{i}" for i in range(4)]
DEADLINE_S = 600.0
TENANTS = [f"tenant-{i}" for i in range(8)]


def build(queued: int, workers: int) -> SchedulerCore:
    clock = time.monotonic
    catalog = {m: ModelCatalogEntry(m, True, 8192, 2048, 64) for m in MODELS}
    no_shedding = AdmissionRules(
        queue_capacity=queued + workers * 4 + 10, shed_low_at=1.0, shed_medium_at=1.0
    )
    settings = CoreSettings(1.0, 3, 0, admission=no_shedding, dispatch=DispatchRules(recovery_s=0))
    core = SchedulerCore(catalog, clock, settings)
    for w in range(workers):
        model = MODELS[w % len(MODELS)]
        slots = ModelSlots(model, 4, True, kv_capacity=60_000)
        core.register_worker(f"w{w}", f"w{w}:1", f"gpu-{w % 8}", [(catalog[model], slots)])
    rng = random.Random(1)
    for i in range(workers * 4 + queued):  # the first fill every slot, the rest wait
        core.submit(
            Ticket(
                f"r{i}",
                MODELS[i % len(MODELS)] if i < workers * 4 else rng.choice(MODELS),
                rng.choice(list(Priority)),
                rng.choice(TENANTS),
                prompt_tokens=rng.randint(20, 500),
                max_tokens=rng.randint(16, 512),
                deadline=clock() + DEADLINE_S,
            )
        )
    return core


def sweep_ms(core: SchedulerCore) -> float:
    samples = []
    for _ in range(5):
        for worker in core.workers():
            core.heartbeat(worker.worker_id, worker.state)
        started = time.perf_counter()
        core.tick()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


_submitted = itertools.count()  # ids of the requests that top the queue up


def decide(core: SchedulerCore, leases: list[Lease], rng: random.Random, end=operator.call):
    """One decision: a random held lease ends, through `end(core.end_lease, ...)` (a timer, or
    callgrind's collection point), then the queue is topped up to its length. Returns the
    core's Changes; `leases` is kept to those held."""
    lease = leases.pop(rng.randrange(len(leases)))
    changes = end(core.end_lease, lease.lease_id, Outcome.COMPLETED, Usage(completion_tokens=16))
    leases.extend(changes.leases_granted())
    for _ in changes.granted:
        model, priority, tenant = rng.choice(MODELS), rng.choice(PRIORITIES), rng.choice(TENANTS)
        request_id = f"n{next(_submitted)}"
        ticket = Ticket(
            request_id, model, priority, tenant, 100, 100, deadline=core.clock() + DEADLINE_S
        )
        core.submit(ticket)
    return changes


def measure(queued: int, workers: int, decisions: int) -> dict[str, float]:
    core = build(queued, workers)
    leases = core.leases()
    rng = random.Random(2)
    samples = []

    def timed(end_lease, *args):
        started = time.perf_counter()
        changes = end_lease(*args)
        samples.append((time.perf_counter() - started) * 1e6)
        return changes

    for _ in range(decisions):
        decide(core, leases, rng, timed)
    samples.sort()
    return {
        "queued": queued,
        "workers": workers,
        "decisions": decisions,
        "mean_us": statistics.fmean(samples),
        "p50_us": samples[len(samples) // 2],
        "p99_us": samples[int(len(samples) * 0.99)],
        "sweep_ms": sweep_ms(core),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=256)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--out", default="bench/results/scheduler_core.json")
    args = parser.parse_args()
    tune_collector()  # as the scheduler process does once it has started
    sizes = [(n, args.workers) for n in (1_000, 10_000, 100_000)]
    sizes += [(10_000, w) for w in (1024, 4096) if w != args.workers]
    rows = [measure(n, w, args.decisions) for n, w in sizes]
    print(f"core: {core_package.BUILD}")
    print(
        f"{'queued':>8} {'workers':>8} {'mean µs':>9} {'p50 µs':>8} {'p99 µs':>8} {'sweep ms':>9}"
    )
    for r in rows:
        print(
            f"{r['queued']:>8} {r['workers']:>8} {r['mean_us']:>9.1f} "
            f"{r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['sweep_ms']:>9.2f}"
        )
    by_size = {(r["queued"], r["workers"]): r for r in rows}
    base, big = by_size.get((10_000, 256)), by_size.get((10_000, 4096))
    summary: dict[str, object] = {"core": core_package.BUILD}
    if base is not None:
        summary["target_p50_under_30us"] = base["p50_us"] < 30
        summary["target_p99_under_100us"] = base["p99_us"] < 100
    if base is not None and big is not None:
        summary["p50_growth_256_to_4096"] = big["p50_us"] / base["p50_us"]
        print(f"p50 at 4096 workers ÷ p50 at 256: {summary['p50_growth_256_to_4096']:.2f}×")
    Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
