"""Per model, the waiting requests that have a deadline, the earliest first.

A heap with lazy deletion (core.stale_heaps) of `(deadline, sequence, request id)`: a request
served or removed leaves its entry behind, dropped when it surfaces or the heap is rebuilt. The
late sweep (core.deadlines) takes out only the requests whose deadline is near, so a sweep
costs O(requests looked at × log N), not O(N).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from services.scheduler.core import stale_heaps
from services.scheduler.core.types import PendingRequest


class DeadlineIndex:
    def __init__(self, waiting: Mapping[str, PendingRequest]) -> None:
        self._waiting = waiting  # the queue's requests by id
        self._heaps: dict[str, list] = {}

    def add(self, request: PendingRequest) -> None:
        """Indexes a request that has a deadline (as the queue numbered it)."""
        heap = self._heaps.setdefault(request.model_id, [])
        entry = (request.deadline, request.sequence, request.request_id)
        stale_heaps.push(heap, entry, len(self._waiting), self._sequence_of)

    def due(self, model_id: str, before: float, limit: int) -> list[PendingRequest]:
        """Takes out of the index (not the queue) at most `limit` waiting requests of the
        model whose deadline comes before the time, the earliest first. `restore` indexes
        again those that stay."""
        heap = self._heaps.get(model_id)
        due: list[PendingRequest] = []
        while heap and heap[0][0] < before and len(due) < limit:
            _, sequence, request_id = heapq.heappop(heap)
            if self._sequence_of(request_id) == sequence:
                due.append(self._waiting[request_id])
        return due

    def restore(self, requests: Iterable[PendingRequest]) -> None:
        for request in requests:
            self.add(request)

    def _sequence_of(self, request_id: str) -> int | None:
        request = self._waiting.get(request_id)
        return request.sequence if request is not None else None
