"""Preemption: which low-priority leases to stop so that waiting high requests get slots.

Per model with a high request blocked at the head of its lane: at most one low lease per high
request waiting, beyond the leases already being freed for that model; the youngest lease
first (it has the least to resume); only on workers that still accept leases (a freed slot
elsewhere would not help).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping

from services.scheduler.core.leases import LeaseTable, fits
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.types import Lease, Priority


def choose_victims(
    queue: RequestQueue, leases: LeaseTable, freeing: Mapping[str, str]
) -> list[Lease]:
    """The low leases to preempt now. `freeing`: lease → model of preemptions under way."""
    blocked = queue.blocked_heads(fits(leases.room()))
    models = {h.model_id for h in blocked if h.priority is Priority.HIGH}
    victims: list[Lease] = []
    freeing_by_model = Counter(freeing.values())
    for model_id in sorted(models):
        wanted = queue.ahead_of(model_id, Priority.HIGH) - freeing_by_model[model_id]
        if wanted <= 0:
            continue
        low = (
            lease
            for lease in leases.leases_of(model_id, Priority.LOW)
            if lease.lease_id not in freeing and _accepts(leases, lease.worker_id)
        )
        victims += heapq.nlargest(wanted, low, key=lambda lease: lease.granted_at)
    return victims


def _accepts(leases: LeaseTable, worker_id: str) -> bool:
    record = leases.worker(worker_id)
    return record is not None and record.accepts_leases
