"""The priority queue: high before medium before low, FIFO within a class.

Requests are kept in one FIFO per (priority, model) so that a request whose model has no free
slot never blocks one behind it whose model has (no head-of-line blocking across models).
Within a class, the oldest request among those that can be served goes first.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator

from services.scheduler.core.types import PendingRequest, Priority


class QueueFull(Exception):
    """The queue holds `capacity` requests already."""


class RequestQueue:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._fifos: dict[Priority, dict[str, deque[PendingRequest]]] = {p: {} for p in Priority}
        self._by_id: dict[str, PendingRequest] = {}
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._by_id

    def push(self, request: PendingRequest) -> PendingRequest:
        """Adds a request at the back of its class. Raises QueueFull at capacity."""
        if len(self._by_id) >= self.capacity:
            raise QueueFull()
        if request.request_id in self._by_id:
            raise ValueError(f"request {request.request_id} already queued")
        queued = PendingRequest(**{**request.__dict__, "sequence": next(self._sequence)})
        self._fifos[queued.priority].setdefault(queued.model_id, deque()).append(queued)
        self._by_id[queued.request_id] = queued
        return queued

    def remove(self, request_id: str) -> PendingRequest | None:
        """Takes a request out wherever it is (cancelled, timed out). None if absent."""
        request = self._by_id.pop(request_id, None)
        if request is not None:
            fifo = self._fifos[request.priority][request.model_id]
            fifo.remove(request)
            if not fifo:
                del self._fifos[request.priority][request.model_id]
        return request

    def pop_next(
        self,
        can_serve: Callable[[str], bool],
        now: float = 0.0,
        starvation_bound_s: float | None = None,
    ) -> PendingRequest | None:
        """Removes and returns the request to serve next among models where `can_serve`.

        Highest class first, oldest first within it; but a request that has waited longer
        than `starvation_bound_s` goes before everything younger (aging), so a low request
        under a steady flood of high ones still waits at most about that long for a slot.
        Only queue heads are looked at: O(classes × models) per decision.
        """
        if starvation_bound_s is not None:
            starved = [
                fifo[0]
                for by_model in self._fifos.values()
                for model_id, fifo in by_model.items()
                if now - fifo[0].enqueued_at > starvation_bound_s and can_serve(model_id)
            ]
            if starved:
                return self.remove(min(starved, key=lambda r: r.sequence).request_id)
        for priority in Priority:
            heads = [
                fifo[0] for model_id, fifo in self._fifos[priority].items() if can_serve(model_id)
            ]
            if heads:
                chosen = min(heads, key=lambda r: r.sequence)
                return self.remove(chosen.request_id)
        return None

    def depth(self, priority: Priority) -> int:
        return sum(len(f) for f in self._fifos[priority].values())

    def waiting_for(self, model_id: str) -> Iterator[PendingRequest]:
        """Every queued request for `model_id`, in no particular order."""
        for by_model in self._fifos.values():
            yield from by_model.get(model_id, ())

    def models(self) -> set[str]:
        """Models with at least one waiting request."""
        return {m for by_model in self._fifos.values() for m, fifo in by_model.items() if fifo}
