"""A short run of the chaos bench (bench/chaos.py) in `make test`: `make up` with two routers
and two workers of each model serves mixed traffic while a scheduler, worker, router or
actuator is killed with kill -9 every few seconds, and (as root, with nft) a worker is cut off
silently every few seconds too (issue 27). Every request ends with the answer the undisturbed
system gave (after the retries its client makes on a retry hint), the lease table empties, and
every lease the last scheduler held ended once."""

import pytest

from bench import chaos_cuts
from bench.chaos import run

pytestmark = pytest.mark.slow
MINUTES = 1.0


def test_nothing_is_lost_while_processes_keep_being_killed(tmp_path):
    partitions = not chaos_cuts.available()
    report = run(MINUTES, clients=4, seed=7, run_dir=tmp_path / "run", partitions=partitions)
    requests = report["requests"]
    total = sum(
        sum(v for k, v in row.items() if k in ("ok", "wrong", "failed", "lost"))
        for row in requests.values()
    )
    assert total >= 20, report
    assert report["not_ok"] == [], report["not_ok"]
    assert sum(report["kills"].values()) >= 4, report["kills"]
    assert sum(report["cuts"].values()) >= (2 if partitions else 0), report["cut_log"]
    assert report["leases"]["starts"] == report["leases"]["ends"], report["leases"]
    assert report["leftover_processes"] == []  # orphans of killed actuators exited too
