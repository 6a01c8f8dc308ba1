import pytest

from services.scheduler.core.queue import QueueFull, RequestQueue
from services.scheduler.core.types import PendingRequest, Priority


def pending(rid: str, priority: Priority = Priority.MEDIUM, model: str = "m") -> PendingRequest:
    return PendingRequest(rid, model, priority, "t", enqueued_at=0.0)


def room(queue: RequestQueue, can_serve=lambda m: True) -> dict[str, float]:
    """Unbounded room for every waiting model, except those `can_serve` refuses."""
    return {m: float("inf") for m in queue.models() if can_serve(m)}


def drain(queue: RequestQueue, can_serve=lambda m: True) -> list[str]:
    out = []
    while (r := queue.pop_next(room(queue, can_serve))) is not None:
        out.append(r.request_id)
    return out


def test_high_before_medium_before_low_and_fifo_within_a_class():
    q = RequestQueue(capacity=10)
    for rid, prio in [
        ("l1", Priority.LOW),
        ("m1", Priority.MEDIUM),
        ("h1", Priority.HIGH),
        ("l2", Priority.LOW),
        ("h2", Priority.HIGH),
        ("m2", Priority.MEDIUM),
    ]:
        q.push(pending(rid, prio))
    assert drain(q) == ["h1", "h2", "m1", "m2", "l1", "l2"]


def test_fifo_holds_across_models_within_a_class():
    q = RequestQueue(capacity=10)
    q.push(pending("a1", model="a"))
    q.push(pending("b1", model="b"))
    q.push(pending("a2", model="a"))
    assert drain(q) == ["a1", "b1", "a2"]


def test_a_model_without_free_slots_does_not_block_others():
    q = RequestQueue(capacity=10)
    q.push(pending("busy", Priority.HIGH, model="busy"))
    q.push(pending("free", Priority.LOW, model="free"))
    assert drain(q, can_serve=lambda m: m == "free") == ["free"]
    assert len(q) == 1 and "busy" in q


def test_capacity_and_depths():
    q = RequestQueue(capacity=2)
    q.push(pending("a", Priority.HIGH))
    q.push(pending("b", Priority.LOW))
    with pytest.raises(QueueFull):
        q.push(pending("c"))
    assert q.depth(Priority.HIGH) == 1 and q.depth(Priority.MEDIUM) == 0
    assert q.depth(Priority.LOW) == 1


def test_remove_takes_a_request_out_once():
    q = RequestQueue(capacity=4)
    q.push(pending("a"))
    q.push(pending("b"))
    assert q.remove("a").request_id == "a"
    assert q.remove("a") is None
    assert drain(q) == ["b"]
    assert q.models() == set()


def test_duplicate_ids_are_refused():
    q = RequestQueue(capacity=4)
    q.push(pending("a"))
    with pytest.raises(ValueError):
        q.push(pending("a"))


def test_a_tenant_whose_service_falls_moves_up_at_once():
    q = RequestQueue(capacity=10)
    for rid, tenant in (("a1", "a"), ("b1", "b"), ("b2", "b")):
        q.push(PendingRequest(rid, "m", Priority.MEDIUM, tenant, enqueued_at=0.0))
    q.fair.charge(Priority.MEDIUM, "a", 1.0, 100)
    q.fair.charge(Priority.MEDIUM, "b", 1.0, 50)
    assert drain_one(q) == "b1"  # a has had more service
    q.fair.charge(Priority.MEDIUM, "a", 1.0, -80)  # a correction: a took less than charged
    assert drain_one(q) == "a1"  # 20 < 50


def drain_one(queue: RequestQueue) -> str:
    return queue.pop_next(room(queue)).request_id
