"""The priority queue: high before medium before low, tenants by weight within a class.

Requests wait in lanes, one FIFO per (priority, model, tenant), so a request whose model has
no room never blocks one behind it whose model has (no head-of-line blocking across models),
and one tenant's backlog never sits in front of another's.

Choosing the next request looks only at lane heads: aging first (a head older than the
starvation bound goes before everything younger), then the highest class, then within it the
tenant with the least weighted service (`FairShare`), oldest head first. A decision costs
O(lanes), independent of how many requests wait; removal is O(1) (lazy: a removed request
stays in its lane until it reaches the head).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace

from services.scheduler.core.types import PendingRequest, Priority

Lane = deque[PendingRequest]


class QueueFull(Exception):
    """The queue holds `capacity` requests already."""


class FairShare:
    """Weighted service per tenant within each class: tokens granted / weight.

    A tenant that becomes backlogged starts at the least service among those already waiting
    in the class, so idle time banks no credit (start-time fair queueing)."""

    def __init__(self) -> None:
        self._service: dict[Priority, dict[str, float]] = {p: {} for p in Priority}

    def service(self, priority: Priority, tenant: str) -> float:
        return self._service[priority].get(tenant, 0.0)

    def joined(self, priority: Priority, tenant: str, backlogged: Iterator[str]) -> None:
        floor = min((self.service(priority, t) for t in backlogged), default=None)
        if floor is not None:
            self._service[priority][tenant] = max(self.service(priority, tenant), floor)

    def charge(self, priority: Priority, tenant: str, weight: float, tokens: float) -> None:
        """Adds `tokens` (negative: a correction) of service, divided by the weight."""
        table = self._service[priority]
        table[tenant] = table.get(tenant, 0.0) + tokens / max(weight, 1e-6)


class RequestQueue:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lanes: dict[Priority, dict[tuple[str, str], Lane]] = {p: {} for p in Priority}
        self._by_id: dict[str, PendingRequest] = {}
        self._backlog: dict[Priority, dict[str, int]] = {p: {} for p in Priority}
        self._per_model: dict[tuple[Priority, str], int] = {}
        self._sequence = itertools.count()
        self.fair = FairShare()

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._by_id

    def push(self, request: PendingRequest, force: bool = False) -> PendingRequest:
        """Adds a request to its lane in arrival order: at the back, unless it arrived before
        requests waiting there (a resubmitted request keeps its place). Raises QueueFull at
        capacity, unless `force`."""
        if len(self._by_id) >= self.capacity and not force:
            raise QueueFull()
        if request.request_id in self._by_id:
            raise ValueError(f"request {request.request_id} already queued")
        queued = replace(request, sequence=next(self._sequence))
        p, tenant = queued.priority, queued.tenant_id
        backlog = self._backlog[p]
        if not backlog.get(tenant):
            self.fair.joined(p, tenant, (t for t, n in backlog.items() if n))
        backlog[tenant] = backlog.get(tenant, 0) + 1
        key = (p, queued.model_id)
        self._per_model[key] = self._per_model.get(key, 0) + 1
        lane = self._lanes[p].setdefault((queued.model_id, tenant), deque())
        _insert_in_order(lane, queued)
        self._by_id[queued.request_id] = queued
        return queued

    def remove(self, request_id: str) -> PendingRequest | None:
        """Takes a request out wherever it is (cancelled, timed out). None if absent."""
        request = self._by_id.pop(request_id, None)
        if request is not None:
            self._backlog[request.priority][request.tenant_id] -= 1
            self._per_model[(request.priority, request.model_id)] -= 1
        return request

    def pop_next(
        self,
        can_serve: Callable[[PendingRequest], bool],
        now: float = 0.0,
        starvation_bound_s: float | None = None,
    ) -> PendingRequest | None:
        """Removes and returns the request to serve next among those `can_serve` accepts."""
        heads = {p: [h for h in self._heads(p) if can_serve(h)] for p in Priority}
        if starvation_bound_s is not None:
            starved = [
                h for hs in heads.values() for h in hs if now - h.enqueued_at > starvation_bound_s
            ]
            if starved:
                return self._take(min(starved, key=lambda r: r.order))
        for priority in Priority:
            if heads[priority]:
                fair = self.fair.service
                chosen = min(heads[priority], key=lambda r: (fair(priority, r.tenant_id), r.order))
                return self._take(chosen)
        return None

    def evict_newest(self, below: Priority) -> PendingRequest | None:
        """Sheds one request of a class lower than `below`, the lowest class first: the newest
        request of the tenant with the most waiting. None if no lower class has any."""
        for priority in sorted((p for p in Priority if p > below), reverse=True):
            backlog = self._backlog[priority]
            tenant = max(backlog, key=lambda t: backlog[t], default=None)
            if tenant is None or not backlog[tenant]:
                continue
            tails = [
                tail
                for (_, lane_tenant), lane in self._lanes[priority].items()
                if lane_tenant == tenant and (tail := self._live_tail(lane)) is not None
            ]
            if tails:
                return self.remove(max(tails, key=lambda r: r.order).request_id)
        return None

    def depth(self, priority: Priority, tenant: str | None = None) -> int:
        """Requests waiting in a class (of one tenant, when given)."""
        backlog = self._backlog[priority]
        return backlog.get(tenant, 0) if tenant is not None else sum(backlog.values())

    def ahead_of(self, model_id: str, priority: Priority) -> int:
        """Requests for the model waiting in `priority` or a higher class."""
        return sum(self._per_model.get((p, model_id), 0) for p in Priority if p <= priority)

    def backlog(self) -> dict[tuple[Priority, str], tuple[int, float]]:
        """Per (class, model) with requests waiting: how many, and the arrival time of the
        oldest (a lane head: lanes are FIFO). O(lanes), not O(requests)."""
        oldest: dict[tuple[Priority, str], float] = {}
        for priority in Priority:
            for head in self._heads(priority):
                key = (priority, head.model_id)
                oldest[key] = min(oldest.get(key, head.enqueued_at), head.enqueued_at)
        return {key: (n, oldest[key]) for key, n in self._per_model.items() if n and key in oldest}

    def requests(self) -> Iterator[PendingRequest]:
        """Every waiting request, in no particular order."""
        return iter(list(self._by_id.values()))

    def waiting_for(self, model_id: str) -> Iterator[PendingRequest]:
        """Every queued request for `model_id`, in no particular order."""
        return (r for r in self.requests() if r.model_id == model_id)

    def take_waiting(
        self, model_id: str, condition: Callable[[PendingRequest], bool] | None = None
    ) -> list[PendingRequest]:
        """Removes and returns the requests for `model_id` (those meeting `condition`)."""
        taken = [r for r in self.waiting_for(model_id) if condition is None or condition(r)]
        for request in taken:
            self.remove(request.request_id)
        return taken

    def models(self) -> set[str]:
        """Models with at least one waiting request."""
        return {m for (_, m), n in self._per_model.items() if n}

    def blocked_heads(self, can_serve: Callable[[PendingRequest], bool]) -> list[PendingRequest]:
        """Lane heads that cannot be served now, highest class first."""
        return [h for p in Priority for h in self._heads(p) if not can_serve(h)]

    def _take(self, request: PendingRequest) -> PendingRequest:
        lane = self._lanes[request.priority][(request.model_id, request.tenant_id)]
        lane.popleft()
        self.remove(request.request_id)
        self.fair.charge(
            request.priority, request.tenant_id, request.tenant_weight, request.charge_estimate
        )
        return request

    def _heads(self, priority: Priority) -> list[PendingRequest]:
        lanes = self._lanes[priority]
        heads = []
        for key in list(lanes):
            lane = lanes[key]
            while lane and self._by_id.get(lane[0].request_id) is not lane[0]:
                lane.popleft()  # removed earlier
            if lane:
                heads.append(lane[0])
            else:
                del lanes[key]
        return heads

    def _live_tail(self, lane: Lane) -> PendingRequest | None:
        while lane and self._by_id.get(lane[-1].request_id) is not lane[-1]:
            lane.pop()
        return lane[-1] if lane else None


def _insert_in_order(lane: Lane, request: PendingRequest) -> None:
    """Appends, or walks back from the tail to the request's place in arrival order (only a
    resubmitted request arrives out of order)."""
    if not lane or lane[-1].order <= request.order:
        lane.append(request)
        return
    index = len(lane)
    while index > 0 and lane[index - 1].order > request.order:
        index -= 1
    lane.insert(index, request)
