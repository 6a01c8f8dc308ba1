"""A lane of the request queue: one FIFO of requests, in arrival order."""

from __future__ import annotations

from collections import deque

from services.scheduler.core.types import PendingRequest

Lane = deque[PendingRequest]


def insert_in_order(lane: Lane, request: PendingRequest) -> None:
    """Appends, or walks back from the tail to the request's place in arrival order (only a
    resubmitted request arrives out of order)."""
    if not lane or lane[-1].order <= request.order:
        lane.append(request)
        return
    index = len(lane)
    while index > 0 and lane[index - 1].order > request.order:
        index -= 1
    lane.insert(index, request)
