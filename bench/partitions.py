"""Hosts that fail quietly: the system across network namespaces (bench/netbed.py, needs
root, ip and nft) with a worker's host cut off silently under 8 greedy streams.

    sudo .venv/bin/python -m bench.partitions [--out bench/results/partitions.json]

Scenarios, one run each, on a fresh fleet (scheduler, router, two workers of the simulated
model, each host its own namespace): `cut-45s` (the second worker's host silent for 45 s from
1 s into the streams), `blip-2s` (silent for 2 s), `heal-5s` (silent for 5 s, then back),
`sched-8s` (cut from the scheduler only for 8 s: the router still streams from it).
For each: streams whose text differs from the undisturbed run, the longest silence any stream
saw, leases the routers resumed (lost), the scheduler's lease starts and ends (each lease
ends once: equal at rest), leases it settled by a worker's late report, and the tokens workers
reported to it against those the streams received.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench import write_report
from bench.net_fleet import STREAMS, TOKENS, NetFleet, run_streams, scheduler_metric
from bench.netbed import NetBed, available

# name → (seconds cut, healed while the streams run, cut from the scheduler only)
SCENARIOS = {
    "cut-45s": (45.0, False, False),
    "blip-2s": (2.0, True, False),
    "heal-5s": (5.0, True, False),
    "sched-8s": (8.0, True, True),
}


def reported_tokens(fleet: NetFleet) -> float:
    return sum(scheduler_metric(fleet, "inference_scheduler_served_tokens").values())


async def scenario(fleet: NetFleet, seconds: float, heal: bool, one_way: bool) -> dict:
    undisturbed = [text for text, _, _ in await run_streams(fleet)]
    await asyncio.sleep(1.0)  # the undisturbed run's reports arrive
    host, before = fleet.worker_hosts[1], reported_tokens(fleet)

    async def cut() -> None:
        await asyncio.sleep(1.0)
        host.cut(fleet.hosts["scheduler"] if one_way else None)
        if heal:
            await asyncio.sleep(seconds)
            host.heal()

    results = await run_streams(fleet, cut)
    if not heal:
        await asyncio.sleep(seconds - 1.0)  # the cut lasts its time, streams or not
        host.heal()
    await asyncio.sleep(5.0)  # the healed worker reports what it ran
    return {
        "streams_wrong": sum(t != u for (t, _, _), u in zip(results, undisturbed, strict=True)),
        "longest_silence_s": round(max(s for _, s, _ in results), 2),
        "resumed": sum(scheduler_metric(fleet, "inference_scheduler_leases_lost").values()),
        "lease_starts": sum(scheduler_metric(fleet, "inference_scheduler_lease_starts").values()),
        "lease_ends": scheduler_metric(fleet, "inference_scheduler_lease_ends"),
        "reconciled": sum(
            scheduler_metric(fleet, "inference_scheduler_leases_reconciled").values()
        ),
        "tokens_reported": reported_tokens(fleet) - before,
        "tokens_streamed": STREAMS * TOKENS,
    }


def run_one(name: str, log_dir: Path) -> dict:
    seconds, heal, one_way = SCENARIOS[name]
    bed = NetBed.create()
    fleet = NetFleet(bed, log_dir / name)
    try:
        fleet.start()
        return asyncio.run(scenario(fleet, seconds, heal, one_way))
    finally:
        fleet.stop()
        bed.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/partitions.json")
    args = parser.parse_args()
    if why := available():
        raise SystemExit(f"network namespaces: {why}")
    with tempfile.TemporaryDirectory(prefix="partitions-") as logs:
        report = {name: run_one(name, Path(logs)) for name in SCENARIOS}
    print(
        f"{'scenario':>9} {'wrong':>6} {'longest silence s':>18} {'resumed':>8} {'starts':>7} "
        f"{'reconciled':>10} {'tokens reported/streamed':>25} ends"
    )
    for name, row in report.items():
        tokens = f"{row['tokens_reported']:g}/{row['tokens_streamed']}"
        print(
            f"{name:>9} {row['streams_wrong']:>6} {row['longest_silence_s']:>18} "
            f"{row['resumed']:>8g} {row['lease_starts']:>7g} {row['reconciled']:>10g} "
            f"{tokens:>25} {row['lease_ends']}"
        )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
