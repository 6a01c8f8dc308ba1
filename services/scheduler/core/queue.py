"""The priority queue: high before medium before low, tenants by weight within a class.

Requests wait in lanes, one FIFO per (priority, model, tenant), so a request whose model has
no room never blocks one behind it whose model has (no head-of-line blocking across models),
and one tenant's backlog never sits in front of another's.

Choosing the next request looks only at lane heads: aging first (a head older than the
starvation bound goes before everything younger), then the highest class, then within it the
tenant with the least weighted service (`FairShare`), oldest head first. The heads are indexed
in heaps, by fairness per (class, model) and by age per model, kept current as heads and
services change (stale entries are skipped when they surface). So a decision costs
O(classes × models with room × log lanes): independent of how many requests wait and of the
fleet's size. Removal is O(1) (lazy: a removed request stays in its lane until it reaches
the head).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from heapq import heappop, heappush, heapreplace

from services.scheduler.core import stale_heaps
from services.scheduler.core.deadline_index import DeadlineIndex
from services.scheduler.core.fairness import FairShare
from services.scheduler.core.lanes import Lane, insert_in_order
from services.scheduler.core.types import PRIORITIES, PendingRequest, Priority

LaneKey = tuple[Priority, str, str]  # (class, model, tenant)

_AT_OR_ABOVE = {p: tuple(q for q in Priority if q <= p) for p in Priority}


class QueueFull(Exception):
    """The queue holds `capacity` requests already."""


class RequestQueue:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lanes: dict[LaneKey, Lane] = {}
        self._by_id: dict[str, PendingRequest] = {}
        self._backlog: dict[Priority, dict[str, int]] = {p: {} for p in Priority}
        # model → requests waiting for it: [all, high, medium, low] (a Priority indexes it);
        # a model leaves when none wait
        self._waiting: dict[str, list[int]] = {}
        self._sequence = itertools.count()
        # lane heads by (service, arrival) per (class, model), and by arrival per model; an
        # entry holds its lane's version when pushed and is stale once the lane's head (or
        # service) moved
        self._by_fairness: dict[tuple[Priority, str], list] = {}
        self._by_age: dict[str, list] = {}
        self._versions: dict[LaneKey, int] = {}  # of its head: the age entry's
        self._fair_versions: dict[LaneKey, int] = {}  # of its head and service
        self._tenant_models: dict[tuple[Priority, str], set[str]] = {}  # lanes of a tenant
        # per (class, model): tenants whose service fell since its fairness heap saw them
        self._fallen: dict[tuple[Priority, str], set[str]] = {}
        self._stamp = 0  # versions of index entries: the last one given
        # (class, model) → [requests pushed, the latest arrival time]
        self._class_arrivals: dict[tuple[Priority, str], list] = {}
        self.deadlines = DeadlineIndex(self._by_id)
        self.fair = FairShare()
        self.fair.on_fall = self._service_fell

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
        queued = self._numbered(request)
        p, model, tenant = queued.priority, queued.model_id, queued.tenant_id
        backlog = self._backlog[p]
        joining = not backlog.get(tenant)
        backlog[tenant] = backlog.get(tenant, 0) + 1
        counts = self._waiting.get(model)
        if counts is None:
            counts = self._waiting[model] = [0, 0, 0, 0]
        counts[0] += 1
        counts[p] += 1
        self._by_id[queued.request_id] = queued
        if queued.deadline is not None:
            self.deadlines.add(queued)
        lane_key = (p, model, tenant)
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = self._lanes[lane_key] = deque()
            self._tenant_models.setdefault((p, tenant), set()).add(model)
        head = lane[0] if lane else None
        insert_in_order(lane, queued)
        if joining:  # may raise its service (picked up lazily)
            self.fair.joined(p, tenant, (t for t, n in backlog.items() if n and t != tenant))
        if lane[0] is not head:
            self._index(lane_key)
        return queued

    def _numbered(self, request: PendingRequest) -> PendingRequest:
        """The request with its arrival numbers: in the queue, and in its (class, model)
        unless it arrived before a request already there."""
        key = (request.priority, request.model_id)
        arrivals = self._class_arrivals.get(key)
        if arrivals is None:
            arrivals = self._class_arrivals[key] = [0, request.enqueued_at]
        number = arrivals[0] if request.enqueued_at >= arrivals[1] else -1
        arrivals[0] += 1
        arrivals[1] = max(arrivals[1], request.enqueued_at)
        return replace(request, sequence=next(self._sequence), class_sequence=number)

    def ahead_at_least(self, request: PendingRequest) -> int:
        """How many waiting requests go before this one at least, served by class and then
        arrival: those of the higher classes, and those of its class that arrived before it
        (counted unless it arrived out of order)."""
        in_class = self.waiting_in(request.model_id, request.priority)
        ahead = self.ahead_of(request.model_id, request.priority) - in_class
        if request.class_sequence >= 0:
            pushed = self._class_arrivals[(request.priority, request.model_id)][0]
            pushed_after = pushed - 1 - request.class_sequence
            ahead += max(0, in_class - 1 - pushed_after)
        return ahead

    def remove(self, request_id: str) -> PendingRequest | None:
        """Takes a request out wherever it is (cancelled, timed out). None if absent."""
        request = self._by_id.pop(request_id, None)
        if request is not None:
            self._uncount(request)
            lane_key = (request.priority, request.model_id, request.tenant_id)
            lane = self._lanes.get(lane_key)
            if lane and lane[0] is request:
                self._index(lane_key)
        return request

    def _uncount(self, request: PendingRequest) -> None:
        """Counts a request out of its tenant's backlog and its model's waiting counts."""
        priority, model = request.priority, request.model_id
        self._backlog[priority][request.tenant_id] -= 1
        counts = self._waiting[model]
        counts[0] -= 1
        counts[priority] -= 1
        if not counts[0]:
            del self._waiting[model]

    def pop_next(
        self,
        room: Mapping[str, float],
        now: float = 0.0,
        starvation_bound_s: float | None = None,
    ) -> PendingRequest | None:
        """Removes and returns the request to serve next among those that fit `room` (per
        model, the most KV tokens one more lease may take; absent: no slot free). Looks only
        at the models with requests waiting and room, class by class from the highest."""
        waiting = self._waiting
        if len(room) <= len(waiting):
            open_models = [(m, free) for m, free in room.items() if m in waiting]
        else:
            get = room.get
            open_models = [(m, free) for m in waiting if (free := get(m, -1)) >= 0]
        if not open_models:
            return None
        if starvation_bound_s is not None:
            starved = self._starved(open_models, now - starvation_bound_s)
            if starved is not None:
                return self._take(starved)
        for priority in PRIORITIES:
            best, best_key = None, None
            services = self.fair.services(priority)
            for model, free in open_models:
                if not waiting[model][priority]:
                    continue
                head = self._fairest(priority, model, free)
                if head is None:
                    continue
                key = (services.get(head.tenant_id, 0.0), head.order)
                if best_key is None or key < best_key:
                    best, best_key = head, key
            if best is not None:
                return self._take(best)
        return None

    def _starved(
        self, open_models: list[tuple[str, float]], arrived_before: float
    ) -> PendingRequest | None:
        """Among the models' oldest requests, the oldest that arrived before the time and
        fits its model's room."""
        oldest = None
        for model, free in open_models:
            head = self._oldest(model)
            if (
                head is not None
                and head.enqueued_at < arrived_before
                and head.kv_tokens <= free
                and (oldest is None or head.order < oldest.order)
            ):
                oldest = head
        return oldest

    def evict_newest(self, below: Priority, tenant: str | None = None) -> PendingRequest | None:
        """Sheds one request of a class lower than `below`, the lowest class first: the newest
        request of the tenant with the most waiting; else, with `tenant` given, the newest in
        `below` itself of a tenant with 2 or more waiting there beyond `tenant`'s count
        (whose fair turn comes first). None if there is none."""
        lower = sorted((p for p in Priority if p > below), reverse=True)
        for priority in lower + [below] * (tenant is not None):
            backlog = self._backlog[priority]
            hog = max(backlog, key=lambda t: backlog[t], default=None)
            floor = backlog.get(tenant or "", 0) + 1 if priority == below else 0
            if hog is None or backlog[hog] <= floor:
                continue
            tails = [
                tail
                for model in self._tenant_models.get((priority, hog), ())
                if (tail := self._live_tail((priority, model, hog))) is not None
            ]
            if tails:
                return self.remove(max(tails, key=lambda r: r.order).request_id)
        return None

    def depth(self, priority: Priority, tenant: str | None = None) -> int:
        """Requests waiting in a class (of one tenant, when given)."""
        backlog = self._backlog[priority]
        return backlog.get(tenant, 0) if tenant is not None else sum(backlog.values())

    def tenants_waiting(self, priority: Priority) -> Mapping[str, int]:
        """Requests waiting in a class, per tenant (some counts may be 0). Read only."""
        return self._backlog[priority]

    def ahead_of(self, model_id: str, priority: Priority) -> int:
        """Requests for the model waiting in `priority` or a higher class."""
        counts = self._waiting.get(model_id)
        if counts is None:
            return 0
        return sum(counts[p] for p in _AT_OR_ABOVE[priority])

    def backlog(self) -> dict[tuple[Priority, str], tuple[int, float]]:
        """Per (class, model) with requests waiting: how many, and the arrival time of the
        oldest (a lane head: lanes are FIFO). O(lanes): for the autoscaler, once a tick."""
        counts = {}
        oldest: dict[tuple[Priority, str], float] = {}
        for (priority, model, _), lane in self._lanes.items():  # lane heads are live
            key = (priority, model)
            oldest[key] = min(oldest.get(key, lane[0].enqueued_at), lane[0].enqueued_at)
        for model, waiting in self._waiting.items():
            for priority in PRIORITIES:
                if waiting[priority]:
                    counts[(priority, model)] = (waiting[priority], oldest[(priority, model)])
        return counts

    def requests(self) -> Iterator[PendingRequest]:
        """Every waiting request, in no particular order."""
        return iter(list(self._by_id.values()))

    def take_waiting(
        self, model_id: str, condition: Callable[[PendingRequest], bool] | None = None
    ) -> list[PendingRequest]:
        """Removes and returns the requests for `model_id` (those meeting `condition`)."""
        mine = (r for r in self.requests() if r.model_id == model_id)
        taken = [r for r in mine if condition is None or condition(r)]
        for request in taken:
            self.remove(request.request_id)
        return taken

    def models(self) -> set[str]:
        """Models with at least one waiting request."""
        return set(self._waiting)

    def waiting_in(self, model_id: str, priority: Priority) -> int:
        """Requests for the model waiting in the class."""
        counts = self._waiting.get(model_id)
        return counts[priority] if counts is not None else 0

    def blocked(self, priority: Priority, model: str, room: Mapping[str, float]) -> bool:
        """Whether the fairest waiting request of (class, model) does not fit `room` (a
        model's most KV tokens one more lease may take; absent: no slot free)."""
        head = self._fairest(priority, model, float("inf"))
        return head is not None and head.kv_tokens > room.get(model, -1)

    # -- the head indexes ------------------------------------------------------------------
    def _take(self, request: PendingRequest) -> PendingRequest:
        """Serves a lane's head: out of the queue, its tenant charged, the lane indexed."""
        lane_key = (request.priority, request.model_id, request.tenant_id)
        self._lanes[lane_key].popleft()
        del self._by_id[request.request_id]
        self._uncount(request)
        self.fair.charge(  # first: the lane's next head is indexed with the new service
            request.priority, request.tenant_id, request.tenant_weight, request.charge_estimate
        )
        self._index(lane_key)
        return request

    def _live_head(self, lane_key: LaneKey) -> PendingRequest | None:
        lane = self._lanes.get(lane_key)
        while lane and self._by_id.get(lane[0].request_id) is not lane[0]:
            lane.popleft()  # removed earlier
        return lane[0] if lane else None

    def _live_tail(self, lane_key: LaneKey) -> PendingRequest | None:
        lane = self._lanes.get(lane_key)
        while lane and self._by_id.get(lane[-1].request_id) is not lane[-1]:
            lane.pop()
        return lane[-1] if lane else None

    def _index(self, lane_key: LaneKey) -> None:
        """Indexes a lane's live head again (its head changed)."""
        head = self._live_head(lane_key)
        p, model, tenant = lane_key
        if head is None:
            del self._lanes[lane_key]
            self._versions.pop(lane_key, None)
            self._fair_versions.pop(lane_key, None)
            self._tenant_models[(p, tenant)].discard(model)
            return
        version = self._stamp = self._stamp + 1
        versions = self._versions
        versions[lane_key] = version
        age_heap = self._by_age.get(model)
        if age_heap is None:
            age_heap = self._by_age[model] = []
        stale_heaps.push(age_heap, (head.order, version, lane_key), len(versions), versions.get)
        self._index_fairness(lane_key, head)

    def _index_fairness(self, lane_key: LaneKey, head: PendingRequest) -> None:
        p, model, tenant = lane_key
        version = self._stamp = self._stamp + 1
        versions = self._fair_versions
        versions[lane_key] = version
        entry = (self.fair.services(p).get(tenant, 0.0), head.order, version, lane_key)
        heap = self._by_fairness.get((p, model))
        if heap is None:
            heap = self._by_fairness[(p, model)] = []
        stale_heaps.push(heap, entry, len(versions), versions.get)

    def _service_fell(self, priority: Priority, tenant: str) -> None:
        """Its lanes move up: their fairness entries are indexed again before their heap is
        next asked (`_fairest`), once however often the service fell. (A service that rises
        moves a lane down; its entries are re-keyed when they reach the top.)"""
        fallen = self._fallen
        for model in self._tenant_models.get((priority, tenant), ()):
            tenants = fallen.get((priority, model))
            if tenants is None:
                fallen[(priority, model)] = {tenant}
            else:
                tenants.add(tenant)

    def _fairest(self, priority: Priority, model: str, room: float) -> PendingRequest | None:
        """The head of least service (then oldest) among the lanes of (class, model) whose
        KV tokens fit `room`."""
        fallen = self._fallen.pop((priority, model), None)
        for tenant in fallen or ():
            lane = self._lanes.get((priority, model, tenant))
            if lane:  # else the lane emptied since
                self._index_fairness((priority, model, tenant), lane[0])
        heap = self._by_fairness.get((priority, model))
        if heap is None:
            return None
        services, versions = self.fair.services(priority), self._fair_versions
        passed, found = [], None
        while heap:
            entry = heap[0]
            lane_key = entry[3]
            if versions.get(lane_key) != entry[2]:
                heappop(heap)  # stale: its lane was indexed again since
                continue
            service = services.get(lane_key[2], 0.0)
            if service != entry[0]:  # its tenant was served since: re-keyed, looked at later
                heapreplace(heap, (service, entry[1], entry[2], lane_key))
                continue
            head = self._lanes[lane_key][0]
            if head.kv_tokens <= room:
                found = head
                break
            passed.append(heappop(heap))
        for entry in passed:
            heappush(heap, entry)
        return found

    def _oldest(self, model: str) -> PendingRequest | None:
        """The oldest head among the lanes of the model (every class)."""
        heap = self._by_age.get(model)
        while heap:
            _, version, lane_key = heap[0]
            if self._versions.get(lane_key) == version:
                return self._lanes[lane_key][0]
            heappop(heap)
        return None
