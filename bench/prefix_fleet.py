"""Routing on cached prefixes at fleet scale: the scheduler's core against a simulated fleet.

    python -m bench.prefix_fleet [--workers 16,256] [--seconds 60] [--loads 0.5,1,2,3]

The llm-d benchmark's shape (its "KV-cache wins you can see", 2025-09): 150 tenants, each
with its own 6,000-token prefix, ask 1,200-token questions (each different) for 100 output
tokens, in Poisson arrivals, the load ramped through `--loads` (requests per second per
worker), `--seconds` of simulated time each. The scheduler is the real core (`SchedulerCore`,
its placement policy, its prefix index fed by cache reports on heartbeats a second apart, as
workers send them); the workers and the clock are simulated (a discrete-event simulation: a
minute of 256 workers takes seconds).

A simulated worker is an H100 running a 70B model (the catalog's profile: 12,000 prefill
tokens/s; 25 ms decode steps, 2 % slower per sequence in the batch), 16 slots and 200,000
tokens of KV: a lease's prefill waits for the worker's earlier prefills (they share its
compute) and computes the prompt tokens its prefix cache does not hold; the first token
comes when it ends; then the output is decoded. The prefix cache is the engines' own
(services/gpu_worker/engines/prefix_cache.py), in the KV the running leases leave free. A
question's blocks are never shared, so they are named by random hashes, not hashed from ids.
Per policy and load: TTFT p50/p90 from arrival, completed requests per second, the cache hit
rate, and the core's CPU per request (its submit and its lease's end, grants included) and
per heartbeat (a worker's cache report applied to the index).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
import time
from dataclasses import dataclass, field

from bench import write_report
from services.common.catalog import GpuProfile
from services.common.prefix_blocks import BLOCK_TOKENS, block_hashes
from services.gpu_worker.engines.prefix_cache import PrefixCache
from services.gpu_worker.engines.simulated import step_seconds
from services.scheduler.core.admission import AdmissionRules
from services.scheduler.core.prefix_index import CacheReport
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.settings import CoreSettings, DispatchRules
from services.scheduler.core.types import (
    ModelCatalogEntry,
    ModelSlots,
    Outcome,
    Priority,
    Ticket,
    Usage,
    WorkerState,
)

MODEL = "sim-70b"
PROFILE = GpuProfile(12000.0, 25.0, 0.02, 200_000)
SLOTS = 16
TENANTS, PREFIX, QUESTION, OUTPUT = 150, 6000, 1200, 100
PROMPT = PREFIX + QUESTION
POLICIES = ("random", "least_loaded", "prefix_affinity", "kv_aware")


@dataclass
class SimWorker:
    cache: PrefixCache = field(default_factory=lambda: PrefixCache(PROFILE.kv_capacity_tokens))
    prefill_free_at: float = 0.0  # when the last prefill queued on it ends
    running: int = 0
    reserved: int = 0  # KV tokens its running leases hold

    def run(self, now: float, chain: tuple[int, ...], kv_tokens: int) -> tuple[float, float, int]:
        """Starts a lease: (first token at, done at, prompt tokens its cache held)."""
        self.running += 1
        self.reserved += kv_tokens
        found = len(self.cache.lookup(chain, PROMPT))
        self.cache.store(chain, [None] * len(chain))
        self.cache.shrink_to((PROFILE.kv_capacity_tokens - self.reserved) // BLOCK_TOKENS)
        computed = PROMPT - found * BLOCK_TOKENS
        first = max(now, self.prefill_free_at) + computed / PROFILE.prefill_tokens_per_s
        self.prefill_free_at = first
        return first, first + OUTPUT * step_seconds(PROFILE, self.running), found * BLOCK_TOKENS

    def report(self) -> CacheReport:
        events = self.cache.take_events()
        if events.resync:
            return CacheReport(MODEL, tuple(self.cache.held()), full=True)
        return CacheReport(MODEL, tuple(events.stored), tuple(events.removed))


class Fleet:
    """One run: the core, the simulated workers and the event queue."""

    def __init__(self, workers: int, placement: str) -> None:
        self.now = 0.0
        entry = ModelCatalogEntry(MODEL, True, 16384, 1024, OUTPUT)
        admission = AdmissionRules(queue_capacity=10**7, shed_low_at=1.0, shed_medium_at=1.0)
        dispatch = DispatchRules(placement=placement, recovery_s=0.0, preemption=False)
        settings = CoreSettings(1.0, 3, 0, admission=admission, dispatch=dispatch)
        self.core = SchedulerCore({MODEL: entry}, lambda: self.now, settings)
        self.workers = {f"w{i}": SimWorker() for i in range(workers)}
        for worker_id in self.workers:
            slots = ModelSlots(MODEL, SLOTS, True, kv_capacity=PROFILE.kv_capacity_tokens)
            self.core.register_worker(worker_id, f"{worker_id}:1", "gpu-0", [(entry, slots)])
        self.events: list[tuple[float, int, str, object]] = []
        self.order = itertools.count()
        self.waiting: dict[str, tuple[float, tuple[int, ...]]] = {}  # request → arrival, chain
        self.firsts: list[tuple[float, float, int]] = []  # (arrived, ttft, cached)
        self.done_at: list[float] = []
        self.core_s = {"decide": 0.0, "beat": 0.0}  # CPU in the core: requests, heartbeats

    def at(self, when: float, kind: str, data: object = None) -> None:
        heapq.heappush(self.events, (when, next(self.order), kind, data))

    def run_until(self, end: float) -> None:
        while self.events and self.events[0][0] <= end:
            self.now, _, kind, data = heapq.heappop(self.events)
            getattr(self, f"_on_{kind}")(data)
        self.now = end

    def _core(self, call, *args, share: str = "decide", **kwargs) -> None:
        started = time.perf_counter()
        changes = call(*args, **kwargs)
        self.core_s[share] += time.perf_counter() - started
        for request, lease in changes.granted:
            arrived, chain = self.waiting.pop(request.request_id)
            worker = self.workers[lease.worker_id]
            first, done, cached = worker.run(self.now, chain, lease.kv_tokens)
            self.firsts.append((arrived, first - arrived, cached))
            self.at(done, "end", (lease, first - arrived))

    def _on_arrive(self, ticket: Ticket) -> None:
        self.waiting[ticket.request_id] = (self.now, ticket.prefix_blocks)
        self._core(self.core.submit, ticket)

    def _on_end(self, data) -> None:
        lease, ttft = data
        worker = self.workers[lease.worker_id]
        worker.running -= 1
        worker.reserved -= lease.kv_tokens
        self.done_at.append(self.now)
        usage = Usage(PROMPT, OUTPUT, ttft * 1000)
        self._core(self.core.end_lease, lease.lease_id, Outcome.COMPLETED, usage)

    def _on_beat(self, _) -> None:
        for worker_id, worker in self.workers.items():
            report = [worker.report()]
            state = WorkerState.READY
            self._core(self.core.heartbeat, worker_id, state, caches=report, share="beat")
        self.at(self.now + 1.0, "beat")


def tenant_chains() -> list[tuple[int, ...]]:
    return [
        tuple(block_hashes([t * 10_000_000 + i for i in range(PREFIX)])) for t in range(TENANTS)
    ]


def schedule_arrivals(fleet: Fleet, rate: float, start: float, seconds: float, rng, chains, ids):
    """Poisson arrivals of `rate` per second over [start, start + seconds)."""
    when = start + rng.expovariate(rate)
    while when < start + seconds:
        tenant = rng.randrange(TENANTS)
        question = tuple(rng.getrandbits(64) for _ in range(QUESTION // BLOCK_TOKENS))
        ticket = Ticket(
            f"r{next(ids)}",
            MODEL,
            Priority.MEDIUM,
            f"tenant-{tenant}",
            prompt_tokens=PROMPT,
            max_tokens=OUTPUT,
            affinity_key=f"You are the assistant of tenant {tenant}",
            prefix_blocks=chains[tenant] + question,
        )
        fleet.at(when, "arrive", ticket)
        when += rng.expovariate(rate)


def run(workers: int, placement: str, loads: list[float], seconds: float) -> list[dict]:
    fleet, rng, ids, chains = (
        Fleet(workers, placement),
        random.Random(5),
        itertools.count(),
        tenant_chains(),
    )
    fleet.at(0.5, "beat")
    rows = []
    for level, load in enumerate(loads):
        start = level * seconds
        schedule_arrivals(fleet, load * workers, start, seconds, rng, chains, ids)
        before, spent = len(fleet.done_at), dict(fleet.core_s)
        fleet.run_until(start + seconds)
        firsts = [f for f in fleet.firsts if start <= f[0] < start + seconds]
        ttfts = sorted(f[1] for f in firsts)
        rows.append(
            {
                "workers": workers,
                "placement": placement,
                "load_per_worker": load,
                "ttft_s_p50": statistics.median(ttfts) if ttfts else None,
                "ttft_s_p90": ttfts[int(0.9 * (len(ttfts) - 1))] if ttfts else None,
                "started": len(firsts),
                "completed_per_s": (len(fleet.done_at) - before) / seconds,
                "hit_rate": sum(f[2] for f in firsts) / (PROMPT * len(firsts)) if firsts else 0,
                "core_ms_per_request": (fleet.core_s["decide"] - spent["decide"])
                * 1000
                / max(1, len(firsts)),
                "core_us_per_heartbeat": (fleet.core_s["beat"] - spent["beat"])
                * 1e6
                / (workers * seconds),
                "queued_at_end": fleet.core.queued(),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="16,256")
    parser.add_argument("--loads", default="0.5,1,2,3")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", default="bench/results/prefix_fleet.json")
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    rows = []
    print(
        f"{'workers':>7} {'policy':<16} {'load':>5} {'ttft p50':>9} {'ttft p90':>9} "
        f"{'done/s':>7} {'hit rate':>8} {'core ms/req':>11}"
    )
    for workers in (int(w) for w in args.workers.split(",")):
        for placement in args.policies.split(","):
            for r in run(workers, placement, loads, args.seconds):
                rows.append(r)
                print(
                    f"{workers:>7} {placement:<16} {r['load_per_worker']:>5} "
                    f"{r['ttft_s_p50'] or 0:>8.2f}s {r['ttft_s_p90'] or 0:>8.2f}s "
                    f"{r['completed_per_s']:>7.1f} {r['hit_rate']:>8.1%} "
                    f"{r['core_ms_per_request']:>11.3f} {r['core_us_per_heartbeat']:>8.0f}",
                    flush=True,
                )
    write_report(args.out, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
