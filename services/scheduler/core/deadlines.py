"""Which waiting requests must leave the queue before their deadline: those the measured
service rate cannot reach in time (DEADLINE_EXCEEDED), and those waiting for a model that
has no worker at all (scaled to zero, or its workers left) for too long (UNAVAILABLE)."""

from __future__ import annotations

from collections.abc import Callable, Container

from services.scheduler.core.fairness import turns_before
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.rates import EventRates
from services.scheduler.core.types import PendingRequest, Priority

LATE_CHECKS = 512  # requests per model one sweep looks at, the earliest deadlines first


def take_late(
    queue: RequestQueue,
    room: Container[str],
    warm: Callable[[str], bool],
    rate: EventRates,
    now: float,
) -> list[PendingRequest]:
    """Removes and returns waiting requests that cannot start before their deadline at the
    measured service rate even if served as early as their class, their arrival and their
    tenant's turn allow (or whose deadline has passed). Models with a free slot (`room`)
    dispatch at once; models with no worker (`warm` false) are `take_cold`'s.

    A sweep looks only at requests whose deadline comes before the model's whole queue would
    drain, the earliest deadlines first and at most `LATE_CHECKS` per model (core.deadline_
    index): O(those × log N), not O(N), twice a second."""
    late: list[PendingRequest] = []
    for model_id in queue.models():
        if model_id in room or not warm(model_id):
            continue
        per_s = rate.rate(model_id)  # None until measured: then only passed deadlines
        drained_in = queue.ahead_of(model_id, Priority.LOW) / per_s if per_s else 0.0
        keep: list[PendingRequest] = []
        turns: dict[tuple[Priority, str], int] = {}  # per sweep: O(tenants) once per tenant
        for request in queue.deadlines.due(model_id, now + drained_in, LATE_CHECKS):
            wait = _ahead(queue, request, turns) / per_s if per_s else 0.0
            deadline = request.deadline  # indexed: it has one
            assert deadline is not None
            (late if now + wait > deadline else keep).append(request)
        queue.deadlines.restore(keep)
    for request in late:
        queue.remove(request.request_id)
    return late


def _ahead(
    queue: RequestQueue, request: PendingRequest, turns: dict[tuple[Priority, str], int]
) -> int:
    """Requests served before a waiting one, at least by arrival, or by its tenant's turn
    in the fair queue when that comes sooner (its tenant's other waiting requests of the
    class counted ahead of it). `turns`: the fair turns already counted in this sweep."""
    by_arrival = queue.ahead_at_least(request)
    higher = queue.ahead_of(request.model_id, request.priority) - queue.waiting_in(
        request.model_id, request.priority
    )
    key = (request.priority, request.tenant_id)
    if key not in turns:
        backlog = queue.tenants_waiting(request.priority)
        own_ahead = max(0, backlog.get(request.tenant_id, 0) - 1)
        turns[key] = turns_before(backlog, request.tenant_id, own_ahead)
    return min(by_arrival, higher + turns[key])


def take_cold(
    queue: RequestQueue,
    warm: Callable[[str], bool],
    now: float,
    timeout_s: float,
    margin_s: float,
) -> list[PendingRequest]:
    """Removes and returns requests waiting for a model no worker serves or is loading past
    `timeout_s`, or within `margin_s` of their deadline: they must be told now."""

    def overdue(request: PendingRequest) -> bool:
        near_deadline = request.deadline is not None and request.deadline - now <= margin_s
        return near_deadline or now - request.enqueued_at >= timeout_s

    return [r for m in queue.models() if not warm(m) for r in queue.take_waiting(m, overdue)]
