"""How the scheduler process runs Python's cyclic garbage collector.

Each decision leaves a few container objects behind that outlive it (index entries, queued
requests, leases). With the default young-generation threshold (700) a collection ran in
0.6 % of decisions (`bench.scheduler_core`), each taking 0.2 to 2 ms on the bench machine:
enough to set a decision's p99 on its own. Almost nothing the core makes is cyclic, so the
scheduler collects the young generation `YOUNG_THRESHOLD / 700` times less often, and takes
what it made at startup (modules, config, servers) out of every collection (`gc.freeze`).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000  # container allocations (net) between young-generation collections


def tune_collector() -> None:
    """Called once the process has started: freezes what exists, collects less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
