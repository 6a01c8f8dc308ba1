import pytest

from services.common.errors import NotFound, ResourceExhausted, Unavailable
from services.scheduler.core.changes import FailReason
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import ModelSlots, Outcome, Priority, WorkerState
from tests.factories import Clock, entry, make_core, ticket


def core(capacity: int = 8) -> tuple[SchedulerCore, Clock]:
    return make_core({"m": entry("m"), "other": entry("other")}, queue_capacity=capacity)


def add_worker(c: SchedulerCore, worker_id: str, slots: int, model: str = "m"):
    return c.register_worker(
        worker_id, f"{worker_id}:1", "cpu-0", [(entry(model), ModelSlots(model, slots, True))]
    )


def test_unknown_model_is_not_found_and_unserved_model_is_unavailable():
    c, _ = core()
    with pytest.raises(NotFound):
        c.submit(ticket("r", "nope", Priority.HIGH))
    with pytest.raises(Unavailable):
        c.submit(ticket("r", "m", Priority.HIGH))


def test_requests_wait_for_a_free_slot_and_go_in_priority_order():
    c, _ = core()
    add_worker(c, "w1", 1)
    [(first, lease)] = c.submit(ticket("low", "m", Priority.LOW)).granted
    assert first.request_id == "low"
    assert c.submit(ticket("low2", "m", Priority.LOW)).granted == []  # the one slot is held
    assert c.submit(ticket("high", "m", Priority.HIGH)).granted == []
    [(nxt, _)] = c.end_lease(lease.lease_id, Outcome.CANCELLED).granted
    assert nxt.request_id == "high"


def test_a_change_returns_every_follow_up_in_one_outcome():
    c, _ = core()
    add_worker(c, "w1", 1)
    [(_, lease)] = c.submit(ticket("a", "m", Priority.LOW)).granted
    c.submit(ticket("b", "m", Priority.MEDIUM))
    ended = c.end_lease(lease.lease_id, Outcome.COMPLETED)
    assert [e.lease for e in ended.ended] == [lease]  # the end, reported once
    assert [r.request_id for r, _ in ended.granted] == ["b"]  # and the slot served again
    assert not c.end_lease(lease.lease_id, Outcome.COMPLETED)  # a second end: no changes


def test_queue_full_is_resource_exhausted_with_a_retry_hint():
    c, _ = core(capacity=1)
    add_worker(c, "w1", 1)
    c.submit(ticket("a", "m", Priority.LOW))  # granted: the queue is empty again
    c.submit(ticket("b", "m", Priority.LOW))
    with pytest.raises(ResourceExhausted) as info:
        c.submit(ticket("c", "m", Priority.LOW))
    assert info.value.retry_after_ms > 0


def test_losing_the_last_worker_orphans_queued_requests_of_its_model():
    c, _ = core()
    add_worker(c, "w1", 1)
    add_worker(c, "w2", 1, model="other")
    [(_, lease)] = c.submit(ticket("r1", "m")).granted
    c.submit(ticket("r2", "m"))
    c.submit(ticket("r3", "other"))
    c.submit(ticket("r4", "other"))
    removal = c.remove_worker("w1")
    assert [(e.lease.lease_id, e.outcome) for e in removal.ended] == [
        (lease.lease_id, Outcome.LOST)
    ]
    assert [(f.request.request_id, f.reason) for f in removal.failed] == [
        ("r2", FailReason.ORPHANED)
    ]
    assert isinstance(removal.failed[0].error, Unavailable)
    assert not c.end_lease(lease.lease_id, Outcome.CANCELLED)


def test_silent_workers_take_no_lease_then_expire_after_twice_the_timeout():
    c, clock = core()  # heartbeats every 1 s, 3 missed: suspect; 6 s: removed
    add_worker(c, "w1", 1)
    add_worker(c, "w2", 1)
    clock.now = 3.5
    assert not c.heartbeat("w2", WorkerState.READY).removed_workers
    assert c.tick().removed_workers == []  # w1 is only suspect: no lease goes there
    assert [lease.worker_id for _, lease in c.submit(ticket("r1")).granted] == ["w2"]
    assert c.submit(ticket("r2")).granted == []
    clock.now = 5.0
    assert not c.heartbeat("w2", WorkerState.READY).removed_workers
    clock.now = 6.5
    assert c.tick().removed_workers == ["w1"]
    assert c.heartbeat("w1", WorkerState.READY).removed_workers == ["w1"]  # must re-register


def test_models_view_counts_ready_workers():
    c, _ = core()
    add_worker(c, "w1", 1)
    add_worker(c, "w2", 1)
    views = {v.entry.model_id: v.ready_workers for v in c.models()}
    assert views == {"m": 2, "other": 0}


def test_aging_bounds_how_long_a_low_request_starves_under_a_flood_of_high_ones():
    c, clock = make_core(starvation_bound_s=10.0)
    add_worker(c, "w1", 1)
    [(_, lease)] = c.submit(ticket("first", "m", Priority.HIGH)).granted
    c.submit(ticket("low", "m", Priority.LOW))
    served = []
    for i in range(30):  # one slot; a new high request arrives every second
        clock.now = float(i)
        c.submit(ticket(f"high{i}", "m", Priority.HIGH))
        [(request, lease)] = c.end_lease(lease.lease_id, Outcome.CANCELLED).granted
        served.append((clock.now, request.request_id))
    low_at = next(t for t, rid in served if rid == "low")
    assert 10.0 < low_at <= 11.0  # served just after its wait passed the bound
    assert [rid for _, rid in served[:10]] == [f"high{i}" for i in range(10)]


def test_without_a_bound_priority_is_strict():
    c, clock = make_core(starvation_bound_s=0.0)
    add_worker(c, "w1", 1)
    [(_, lease)] = c.submit(ticket("first", "m", Priority.HIGH)).granted
    c.submit(ticket("low", "m", Priority.LOW))
    for i in range(40):
        clock.now = float(i)
        c.submit(ticket(f"high{i}", "m", Priority.HIGH))
        [(request, lease)] = c.end_lease(lease.lease_id, Outcome.CANCELLED).granted
        assert request.request_id != "low"
