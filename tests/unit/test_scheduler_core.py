import pytest

from services.common.errors import NotFound, ResourceExhausted, Unavailable
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import (
    ModelCatalogEntry,
    ModelSlots,
    Outcome,
    Priority,
    WorkerState,
)
from tests.factories import Clock


def entry(model_id: str) -> ModelCatalogEntry:
    return ModelCatalogEntry(model_id, False, 2048, 512, 64)


def core(capacity: int = 8) -> tuple[SchedulerCore, Clock]:
    clock = Clock()
    c = SchedulerCore({"m": entry("m"), "other": entry("other")}, capacity, 3.0, clock)
    return c, clock


def add_worker(c: SchedulerCore, worker_id: str, slots: int, model: str = "m") -> None:
    c.register_worker(
        worker_id, f"{worker_id}:1", "cpu-0", [(entry(model), ModelSlots(model, slots, True))]
    )


def test_unknown_model_is_not_found_and_unserved_model_is_unavailable():
    c, _ = core()
    with pytest.raises(NotFound):
        c.enqueue("r", "nope", Priority.HIGH, "t")
    with pytest.raises(Unavailable):
        c.enqueue("r", "m", Priority.HIGH, "t")


def test_requests_wait_for_a_free_slot_and_go_in_priority_order():
    c, _ = core()
    add_worker(c, "w1", 1)
    c.enqueue("low", "m", Priority.LOW, "t")
    [(first, lease)] = c.dispatch()
    assert first.request_id == "low"
    c.enqueue("low2", "m", Priority.LOW, "t")
    c.enqueue("high", "m", Priority.HIGH, "t")
    assert c.dispatch() == []  # the one slot is held
    c.end_lease(lease.lease_id, Outcome.CANCELLED)
    [(nxt, _)] = c.dispatch()
    assert nxt.request_id == "high"


def test_queue_full_is_resource_exhausted_with_a_retry_hint():
    c, _ = core(capacity=1)
    add_worker(c, "w1", 1)
    c.enqueue("a", "m", Priority.LOW, "t")
    with pytest.raises(ResourceExhausted) as info:
        c.enqueue("b", "m", Priority.LOW, "t")
    assert info.value.retry_after_ms > 0


def test_losing_the_last_worker_orphans_queued_requests_of_its_model():
    c, _ = core()
    add_worker(c, "w1", 1)
    add_worker(c, "w2", 1, model="other")
    c.enqueue("r1", "m", Priority.MEDIUM, "t")
    [(_, lease)] = c.dispatch()
    c.enqueue("r2", "m", Priority.MEDIUM, "t")
    c.enqueue("r3", "other", Priority.MEDIUM, "t")
    c.enqueue("r4", "other", Priority.MEDIUM, "t")
    removal = c.remove_worker("w1")
    assert [lease.lease_id for lease in removal.reclaimed] == [lease.lease_id]
    assert [r.request_id for r in removal.orphaned] == ["r2"]
    assert c.end_lease(lease.lease_id, Outcome.CANCELLED) is None


def test_silent_workers_expire_after_the_timeout():
    c, clock = core()
    add_worker(c, "w1", 1)
    add_worker(c, "w2", 1)
    clock.now = 2.0
    assert c.heartbeat("w2", WorkerState.READY)
    clock.now = 3.5
    assert [r.worker_id for r in c.expire_silent_workers()] == ["w1"]
    assert not c.heartbeat("w1", WorkerState.READY)  # a dead worker must re-register


def test_models_view_counts_ready_workers():
    c, _ = core()
    add_worker(c, "w1", 1)
    add_worker(c, "w2", 1)
    views = {v.entry.model_id: v.ready_workers for v in c.models()}
    assert views == {"m": 2, "other": 0}


def test_aging_bounds_how_long_a_low_request_starves_under_a_flood_of_high_ones():
    clock = Clock()
    c = SchedulerCore({"m": entry("m")}, 100, 3.0, clock, starvation_bound_s=10.0)
    add_worker(c, "w1", 1)
    c.enqueue("low", "m", Priority.LOW, "t")
    served = []
    for i in range(30):  # one slot; a new high request arrives every second
        clock.now = float(i)
        c.enqueue(f"high{i}", "m", Priority.HIGH, "t")
        [(request, lease)] = c.dispatch()
        served.append((clock.now, request.request_id))
        c.end_lease(lease.lease_id, Outcome.CANCELLED)
    low_at = next(t for t, rid in served if rid == "low")
    assert 10.0 < low_at <= 11.0  # served just after its wait passed the bound
    assert [rid for _, rid in served[:10]] == [f"high{i}" for i in range(10)]


def test_without_a_bound_priority_is_strict():
    clock = Clock()
    c = SchedulerCore({"m": entry("m")}, 100, 3.0, clock)
    add_worker(c, "w1", 1)
    c.enqueue("low", "m", Priority.LOW, "t")
    for i in range(20):
        clock.now = float(i)
        c.enqueue(f"high{i}", "m", Priority.HIGH, "t")
        [(request, lease)] = c.dispatch()
        assert request.request_id != "low"
        c.end_lease(lease.lease_id, Outcome.CANCELLED)
