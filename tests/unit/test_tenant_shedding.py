"""Under overload, tenants are shed heaviest first: a tenant with fewer requests waiting in its
class than another is admitted (its fair turn comes first), evicting the heavy tenant's newest
when the queue is full; and a deadline is judged by the request's place in the fair queue,
with a hint of when it could be met."""

import pytest

from services.common.errors import DeadlineExceeded, ResourceExhausted
from services.scheduler.core import deadlines
from services.scheduler.core.changes import FailReason
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.rates import EventRates
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import (
    ModelCatalogEntry,
    ModelSlots,
    Outcome,
    PendingRequest,
    Priority,
)
from tests.factories import Clock, make_core, ticket

LOW, MEDIUM = Priority.LOW, Priority.MEDIUM


def make(capacity: int) -> tuple[SchedulerCore, Clock]:
    catalog = {"m": ModelCatalogEntry("m", False, 2048, 512, 64)}
    c, clock = make_core(catalog, queue_capacity=capacity, starvation_bound_s=0.0)
    c.register_worker("w1", "w1:1", "gpu-0", [(catalog["m"], ModelSlots("m", 1, True))])
    return c, clock


def submit(c: SchedulerCore, rid: str, priority: Priority, tenant: str, **fields):
    return c.submit(ticket(rid, "m", priority, tenant, **fields))


def test_pressure_sheds_the_flooding_tenant_not_the_quiet_one():
    c, _ = make(capacity=10)
    submit(c, "running", MEDIUM, "flood")  # holds the one slot
    for i in range(7):
        submit(c, f"f{i}", LOW, "flood")
    with pytest.raises(ResourceExhausted):
        submit(c, "f7", LOW, "flood")  # 7 of 10: low sheds at 70%, for the heaviest
    submit(c, "q0", LOW, "quiet")  # 0 waiting against 7: its turn comes first
    submit(c, "q1", LOW, "quiet")
    assert c.queue_depths("quiet") == {Priority.HIGH: 0, MEDIUM: 0, LOW: 2}


def test_a_full_queue_evicts_the_heaviest_tenants_newest_for_a_lighter_one():
    c, _ = make(capacity=6)
    submit(c, "running", MEDIUM, "flood")
    for i in range(5):
        submit(c, f"f{i}", LOW, "flood")
    submit(c, "q0", LOW, "quiet")  # 6 of 6 now
    evicting = submit(c, "q1", LOW, "quiet")
    assert [(f.request.request_id, f.reason) for f in evicting.failed] == [
        ("f4", FailReason.EVICTED)
    ]
    with pytest.raises(ResourceExhausted):  # 4 against 2: flood is the heaviest still
        submit(c, "f5", LOW, "flood")
    [evicted] = submit(c, "q2", LOW, "quiet").failed  # 4 against 2: evicts f3
    assert evicted.request.request_id == "f3"
    with pytest.raises(ResourceExhausted):  # 3 against 3: neither goes before the other
        submit(c, "q3", LOW, "quiet")


def test_a_deadline_is_judged_by_the_place_in_the_fair_queue_with_a_retry_hint():
    c, clock = make(capacity=100)
    for i in range(6):  # one completion a second
        [(_, lease)] = submit(c, f"r{i}", MEDIUM, "flood").granted
        clock.now += 1.0
        c.end_lease(lease.lease_id, Outcome.COMPLETED)
    submit(c, "hold", MEDIUM, "flood")
    for i in range(8):
        submit(c, f"f{i}", MEDIUM, "flood")
    with pytest.raises(DeadlineExceeded) as late:  # 8 ahead at ~1/s: needs ~8 s, has 3
        submit(c, "hurry", MEDIUM, "flood", deadline=clock.now + 3.0)
    assert 3000 <= late.value.retry_after_ms <= 8000  # about the wait it lacks
    # another tenant's first request waits for one turn of each tenant: about 1 s
    submit(c, "quiet", MEDIUM, "quiet", deadline=clock.now + 3.0)


def test_the_late_sweep_keeps_a_request_whose_tenants_turn_comes_in_time():
    clock = Clock(0.0)
    rates = EventRates(30.0, clock)
    for _ in range(8):  # 8 per second
        rates.record("m")
        clock.now += 0.125
    queue = RequestQueue(1_000)
    for i in range(80):  # 10 s of flood ahead by arrival
        queue.push(PendingRequest(f"f{i}", "m", MEDIUM, "flood", clock.now))
    for tenant in ("quiet", "flood"):
        late = PendingRequest(
            f"{tenant}-1s", "m", MEDIUM, tenant, clock.now, deadline=clock.now + 1
        )
        queue.push(late)
    dropped = deadlines.take_late(queue, set(), lambda model: True, rates, clock.now)
    # quiet's turn comes after one flood request; flood's own is 80 requests (10 s) away
    assert [r.request_id for r in dropped] == ["flood-1s"]
