"""The indexes behind each decision agree with a plain scan, whatever happened before:
the lease table's room per model and least loaded worker, and the queue's fairest head."""

from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.core import stale_heaps
from services.scheduler.core.leases import LeaseTable
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.types import (
    ModelSlots,
    PendingRequest,
    Priority,
    WorkerState,
)
from services.scheduler.core.worker_choice import _load_key

MODELS = ("a", "b")
WORKERS = [f"w{i}" for i in range(6)]

operations = st.lists(
    st.tuples(
        st.sampled_from(["grant", "release", "state", "suspect", "beat"]),
        st.integers(0, 1_000),
        st.integers(1, 900),
    ),
    max_size=80,
)


def table() -> LeaseTable:
    leases = LeaseTable()
    for i, worker_id in enumerate(WORKERS):
        model = MODELS[i % 2]
        slots = ModelSlots(model, 1 + i % 3, True, kv_capacity=1000 * (i % 2))
        leases.upsert_worker(worker_id, f"{worker_id}:1", "gpu", [slots], 0.0)
    return leases


def scan_room(leases: LeaseTable, model: str) -> float:
    rooms = [
        w.models[model].kv_room()
        for w in leases.workers()
        if model in w.models and w.accepts_leases and w.models[model].ready
    ]
    return max([r for r in rooms if r >= 0], default=-1)


def apply(leases: LeaseTable, op: str, n: int, kv: int, held: list[str]) -> None:
    worker_id = WORKERS[n % len(WORKERS)]
    if op == "grant":
        request_id = f"r{len(held)}-{n}"
        request = PendingRequest(request_id, MODELS[n % 2], Priority.LOW, "t", 0.0, max_tokens=kv)
        lease = leases.grant(request, 0.0)
        if lease is not None:
            held.append(lease.lease_id)
    elif op == "release" and held:
        leases.release(held.pop(n % len(held)))
    elif op == "state":
        state = [WorkerState.READY, WorkerState.DRAINING][n % 2]
        leases.heartbeat(worker_id, 0.0, state)
    elif op == "suspect":
        leases.suspect(worker_id)
    elif op == "beat":
        leases.heartbeat(worker_id, 0.0, WorkerState.READY)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_the_room_index_agrees_with_a_scan_of_the_workers(ops):
    leases, held = table(), []
    for op, n, kv in ops:
        apply(leases, op, n, kv, held)
        for model in MODELS:
            assert leases.room().get(model, -1) == scan_room(leases, model)
            picked = leases._index.least_loaded(model, 0, "")
            fitting = [
                w
                for w in leases.workers()
                if model in w.models and w.accepts_leases and w.models[model].kv_room() >= 0
            ]
            if fitting:
                best = max(_load_key(w, model) for w in fitting)
                assert picked is not None and _load_key(picked, model) == best
            else:
                assert picked is None


queue_ops = st.lists(
    st.tuples(
        st.sampled_from(["push", "pop", "remove", "charge"]),
        st.integers(0, 10_000),
        st.sampled_from(list(Priority)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(queue_ops)
def test_the_queue_serves_what_a_scan_of_the_lane_heads_would(ops):
    queue, waiting = RequestQueue(1_000), {}
    room = {m: float("inf") for m in MODELS}
    for op, n, priority in ops:
        tenant, model = f"t{n % 4}", MODELS[n % 2]
        if op == "push":
            request = PendingRequest(f"r{n}", model, priority, tenant, float(n % 7))
            if request.request_id not in waiting:
                waiting[request.request_id] = queue.push(request)
        elif op == "remove" and waiting:
            queue.remove(sorted(waiting)[n % len(waiting)])
            waiting.pop(sorted(waiting)[n % len(waiting)])
        elif op == "charge":
            queue.fair.charge(priority, tenant, 1.0, (n % 200) - 100)
        elif op == "pop":
            expected = scan_next(queue, waiting)
            served = queue.pop_next(room)
            assert (served.request_id if served else None) == expected
            if served is not None:
                waiting.pop(served.request_id)


def scan_next(queue: RequestQueue, waiting: dict[str, PendingRequest]) -> str | None:
    """The next request by the rule itself: highest class, least service, oldest head."""
    heads: dict[tuple, PendingRequest] = {}
    for r in waiting.values():
        lane = (r.priority, r.model_id, r.tenant_id)
        if lane not in heads or r.order < heads[lane].order:
            heads[lane] = r
    if not heads:
        return None
    best = min(
        heads.values(),
        key=lambda r: (r.priority, queue.fair.service(r.priority, r.tenant_id), r.order),
    )
    return best.request_id


def test_stale_entries_behind_a_long_waiting_head_do_not_pile_up():
    """A low request that waits (its model never has room for its class) keeps the top of
    its model's age heap; the entries of high heads served meanwhile are stale below it and
    are dropped when the heap is rebuilt, so the heap stays a few times the lanes."""
    queue = RequestQueue(100_000)
    queue.push(PendingRequest("old-low", "a", Priority.LOW, "t0", 0.0))
    room = {"a": float("inf")}
    for i in range(5_000):
        queue.push(PendingRequest(f"h{i}", "a", Priority.HIGH, f"t{i % 4}", 1.0 + i))
        assert queue.pop_next(room).request_id == f"h{i}"
    assert queue.pop_next(room).request_id == "old-low"
    lanes = 5  # four high tenants and the low one
    bound = stale_heaps.COMPACT_FACTOR * lanes + 64
    assert all(len(heap) <= bound + 1 for heap in queue._by_age.values())
    assert all(len(heap) <= bound + 1 for heap in queue._by_fairness.values())
