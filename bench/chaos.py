"""Nothing lost under continuous chaos: `make up` with two routers and two workers of each
model serves mixed traffic while a process is killed with kill -9 every few seconds.

    python -m bench.chaos [--minutes 10] [--clients 6] [--seed 1] [--partitions]
        [--out bench/results/chaos.json]

The system is started as a user starts it (bench/chaos_system.py): the supervisor restarts
what dies, the actuator replaces workers. First every request's answer is taken from the
undisturbed system; then, for `--minutes`, `--clients` users send streams, Infer, Embed and
OpenAI SSE streams (three priorities, three tenants, one over its rate; bench/chaos_traffic.py)
while a random scheduler, worker, router or actuator is killed every 4-10 s, sometimes two at
once. With `--partitions` (root and nft), a worker is also cut off silently every 6-14 s
for 2-12 s, from everyone, from the routers only or from the scheduler only
(bench/chaos_cuts.py). At the end: each request's outcome (its full answer, identical to the
undisturbed one, after any retry its client made on an explicit status with a retry hint; or
wrong, failed, lost), the kills and cuts by kind, the lease table (empty once the system is
quiet, and every lease it holds or held ended once: starts = ends in the scheduler's
metrics), each kind of process's memory over its longest life (warm, then at its end), and
the ERROR lines in the logs.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import chaos_cuts, write_report
from bench.chaos_system import MODELS, WORKERS_PER_MODEL, ChaosSystem, rss_mb
from bench.chaos_traffic import Result, random_job, references, run_job
from client.sdk import InferenceClient

OUTCOMES = ("ok", "wrong", "failed", "lost", "retried on a hint", "moved router")
OUTCOMES += ("retried after a cut",)
KILL_WEIGHTS = {"worker": 4, "router": 2, "scheduler": 2, "actuator": 1}
TWO_AT_ONCE = 0.25  # the share of kill rounds that kill two processes


def kill_loop(system: ChaosSystem, rng: random.Random, stop: threading.Event, log: list) -> None:
    """Every 4-10 s a kill -9 of a random process (sometimes two), until `stop`."""
    kinds = [k for k, w in KILL_WEIGHTS.items() for _ in range(w)]
    began = time.monotonic()
    while not stop.wait(rng.uniform(4.0, 10.0)):
        for kind in rng.sample(kinds, 2 if rng.random() < TWO_AT_ONCE else 1):
            victims = system.victims(kind)
            if not victims:
                continue
            name, pid = rng.choice(victims)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            at = round(time.monotonic() - began, 1)
            log.append({"at_s": at, "kind": kind, "process": name})


def clients_loop(
    system: ChaosSystem, expected: dict, rng: random.Random, stop: threading.Event, out: list
) -> None:
    while not stop.is_set():
        job = random_job(rng)
        out.append(run_job(job, system.routers, system.http, expected))


def wait_whole(system: ChaosSystem, timeout_s: float = 300) -> float:
    """Waits until every model has its workers ready and no lease is held; the seconds."""
    started = time.monotonic()
    with InferenceClient(system.routers, timeout_s=10) as client:
        while time.monotonic() - started < timeout_s:
            try:
                models = {m.model_id: m.ready_workers for m in client.models().models}
                status = client.status()
            except Exception:  # noqa: BLE001 - a process may still be coming back
                time.sleep(1)
                continue
            whole = all(models.get(m, 0) >= WORKERS_PER_MODEL for m in MODELS)
            queued = sum(q.depth for q in status.queues)
            if whole and status.active_leases == 0 and queued == 0:
                return time.monotonic() - started
            time.sleep(1)
    raise TimeoutError(f"the system did not settle:\n{system.logs()}")


def lease_counts(system: ChaosSystem) -> dict[str, float]:
    """Leases started (granted or adopted) and ended, in the running scheduler's metrics."""
    text = urllib.request.urlopen(f"http://{system.scheduler_metrics}/metrics", timeout=5).read()
    totals: Counter[str] = Counter()
    for name, value in re.findall(
        r"^(inference_scheduler_lease_(?:starts|ends)_total)\{[^}]*\} (\S+)$",
        text.decode(),
        re.MULTILINE,
    ):
        totals[name.removeprefix("inference_scheduler_lease_").removesuffix("_total")] += float(
            value
        )
    return dict(totals)


WARM_S = 20.0  # an incarnation's memory is compared from this age on
MEMORY_EVERY_S = 5.0


def kind_of(name: str) -> str:
    """scheduler, actuator, router, or worker:<model> (worker ids carry their model)."""
    if name in ("scheduler", "actuator") or name.startswith("router"):
        return name.split("-")[0]
    model = next((m for m in MODELS if m in name), "?")
    return f"worker:{model}"


def sample_memory(system: ChaosSystem, stop: threading.Event, samples: dict) -> None:
    """Every few seconds, each process's RSS: (kind, pid) → [(seconds, MB)]."""
    began = time.monotonic()
    while not stop.wait(MEMORY_EVERY_S):
        for name, pid in system.processes().items():
            samples.setdefault((kind_of(name), pid), []).append(
                (time.monotonic() - began, rss_mb(pid))
            )


def memory_report(samples: dict) -> dict[str, dict]:
    """Per kind, its longest-lived incarnation: RSS once warm (WARM_S after its first
    sample) and at its last sample, and how long it lived in between."""
    best: dict[str, dict] = {}
    for (kind, _), points in samples.items():
        warm = [(t, mb) for t, mb in points if t - points[0][0] >= WARM_S and mb > 0]
        if len(warm) < 2:
            continue
        row = {
            "lived_s": round(warm[-1][0] - warm[0][0], 1),
            "warm_mb": round(warm[0][1], 1),
            "end_mb": round(warm[-1][1], 1),
        }
        if row["lived_s"] > best.get(kind, {}).get("lived_s", -1):
            best[kind] = row
    return best


def run(minutes: float, clients: int, seed: int, run_dir: Path, partitions: bool = False) -> dict:
    rng, cuts = random.Random(seed), []
    system = ChaosSystem(run_dir)
    system.start()
    try:
        wait_whole(system)
        expected = references(system.routers, system.http)
        stop, kills, results, samples = threading.Event(), [], [], {}
        killer = threading.Thread(target=kill_loop, args=(system, rng, stop, kills))
        sampler = threading.Thread(target=sample_memory, args=(system, stop, samples))
        cutter = threading.Thread(
            target=chaos_cuts.cut_loop, args=(system, random.Random(seed + 7), stop, cuts)
        )
        killer.start()
        sampler.start()
        if partitions:
            cutter.start()
        with ThreadPoolExecutor(clients) as pool:
            for i in range(clients):
                pool.submit(
                    clients_loop, system, expected, random.Random(seed * 100 + i), stop, results
                )
            stop.wait(minutes * 60)
            stop.set()
            killer.join()
            sampler.join()
            if partitions:
                cutter.join()
        settled_s = wait_whole(system)
        leases = lease_counts(system)
    finally:
        system.stop()
        leftovers = system.leftovers()
    report = summarize(results, kills, leases, settled_s, minutes)
    report["cuts"], report["cut_log"] = dict(Counter(c["kind"] for c in cuts)), cuts
    report["leftover_processes"] = leftovers
    report["memory"] = memory_report(samples)
    report["log_errors"] = log_errors(run_dir)
    return report


def log_errors(run_dir: Path) -> dict[str, list[str]]:
    """ERROR lines and tracebacks in each process's log (the supervisor's copy: every
    incarnation), the first few of each."""
    found = {}
    for log in sorted(run_dir.glob("*.log")):
        lines = [
            line[:300]
            for line in log.read_text(errors="replace").splitlines()
            if '"level": "error"' in line or line.startswith("Traceback")
        ]
        if lines:
            found[log.name] = lines[:5] + ([f"... {len(lines)} in all"] if len(lines) > 5 else [])
    return found


def summarize(results: list[Result], kills, leases, settled_s, minutes) -> dict:
    by_kind: dict[str, Counter] = {}
    for r in results:
        row = by_kind.setdefault(r.job.kind, Counter())
        row[r.outcome] += 1
        row["retried on a hint"] += bool(r.hinted)
        row["retried after a cut"] += bool(r.cuts)
        row["moved router"] += bool(r.moves)
    return {
        "minutes": minutes,
        "requests": {kind: dict(row) for kind, row in by_kind.items()},
        "not_ok": [
            {
                "job": vars(r.job),
                "outcome": r.outcome,
                "detail": r.detail,
                "tries": r.tries,
                "hinted": dict(Counter(r.hinted)),
            }
            for r in results
            if r.outcome != "ok"
        ],
        "kills": dict(Counter(k["kind"] for k in kills)),
        "kill_log": kills,
        "leases": leases,
        "settled_s": round(settled_s, 1),
    }


def print_report(report: dict) -> None:
    outcomes = (
        "ok",
        "wrong",
        "failed",
        "lost",
        "retried on a hint",
        "moved router",
        "retried after a cut",
    )
    print(f"{'requests':>8} " + " ".join(f"{o:>17}" for o in outcomes))
    for kind, row in sorted(report["requests"].items()):
        print(f"{kind:>8} " + " ".join(f"{row.get(o, 0):>17}" for o in outcomes))
    print("kills:", ", ".join(f"{k} {n}" for k, n in sorted(report["kills"].items())) or "none")
    cuts = report.get("cuts", {})
    print("cuts:", ", ".join(f"{k} {n}" for k, n in sorted(cuts.items())) or "none")
    print(f"leases after the run: {report['leases']} (settled in {report['settled_s']} s)")
    print(f"processes left behind after the stop: {len(report['leftover_processes'])}")
    print(f"{'process (longest life)':>28} {'lived s':>8} {'MB warm':>8} {'MB at end':>10}")
    for kind, mem in sorted(report["memory"].items()):
        print(f"{kind:>28} {mem['lived_s']:>8} {mem['warm_mb']:>8} {mem['end_mb']:>10}")
    for bad in report["not_ok"][:20]:
        print("not ok:", bad)
    for name, lines in report["log_errors"].items():
        print(f"errors in {name}:", *lines, sep="\n  ")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", action="store_true", help="cut workers off too")
    parser.add_argument("--out", default="bench/results/chaos.json")
    args = parser.parse_args()
    if args.partitions and (why := chaos_cuts.available()):
        raise SystemExit(f"--partitions: {why}")
    with tempfile.TemporaryDirectory(prefix="chaos-") as run_dir:
        report = run(args.minutes, args.clients, args.seed, Path(run_dir), args.partitions)
    print_report(report)
    write_report(args.out, report)


if __name__ == "__main__":
    main()
