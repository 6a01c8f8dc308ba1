"""Which waiting requests must leave the queue before their deadline: those the measured
service rate cannot reach in time (DEADLINE_EXCEEDED), and those waiting for a model that
has no worker at all (scaled to zero, or its workers left) for too long (UNAVAILABLE)."""

from __future__ import annotations

from collections.abc import Callable, Container

from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.rates import EventRates
from services.scheduler.core.types import PendingRequest


def take_late(
    queue: RequestQueue,
    room: Container[str],
    warm: Callable[[str], bool],
    rate: EventRates,
    now: float,
) -> list[PendingRequest]:
    """Removes and returns waiting requests that cannot start before their deadline at the
    measured service rate (or whose deadline has passed). Models with a free slot (`room`)
    dispatch at once; models with no worker (`warm` false) are `take_cold`'s."""
    by_model: dict[str, list[PendingRequest]] = {}
    for request in queue.requests():
        by_model.setdefault(request.model_id, []).append(request)
    late = []
    for model_id, waiting in by_model.items():
        if model_id in room or not warm(model_id):
            continue
        waiting.sort(key=lambda r: (r.priority, r.order))
        for ahead, request in enumerate(waiting):
            if request.deadline is None:
                continue
            wait = rate.wait_s(model_id, ahead) or 0.0
            if now + wait > request.deadline:
                queue.remove(request.request_id)
                late.append(request)
    return late


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
