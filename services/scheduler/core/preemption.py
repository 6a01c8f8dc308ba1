"""Preemption: which low-priority leases to stop so that waiting high requests get slots.

Per model with a high request blocked at the head of its lane: at most one low lease per high
request waiting, beyond the leases already being freed for that model; the youngest lease
first (it has the least to resume); only on workers that still accept leases (a freed slot
elsewhere would not help).
"""

from __future__ import annotations

import itertools

from services.scheduler.core.leases import LeaseTable
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.types import Lease, Priority


def choose_victims(queue: RequestQueue, leases: LeaseTable) -> list[Lease]:
    """The low leases to preempt now (then marked so in the lease table, until released).
    The cheap tests go first: most calls find no low lease to take, or enough being freed."""
    victims: list[Lease] = []
    room = leases.room()
    for model_id in leases.models_held(Priority.LOW):
        wanted = queue.waiting_in(model_id, Priority.HIGH) - leases.preempting(model_id)
        if wanted <= 0 or not queue.blocked(Priority.HIGH, model_id, room):
            continue
        low = (
            lease
            for lease in leases.youngest_first(model_id, Priority.LOW)
            if _accepts(leases, lease.worker_id)
        )
        victims += itertools.islice(low, wanted)
    for lease in victims:
        leases.mark_preempted(lease.lease_id)
    return victims


def _accepts(leases: LeaseTable, worker_id: str) -> bool:
    record = leases.worker(worker_id)
    return record is not None and record.accepts_leases
