"""The life of a lease in the core: it ends exactly once whoever notices first, fairness pays
for the tokens really generated, and a restarted scheduler rebuilds its table and its queue
order from what workers and routers bring back."""

from dataclasses import replace

from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import (
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    Outcome,
    Priority,
    Usage,
)
from tests.factories import Clock


def make(**kwargs) -> tuple[SchedulerCore, Clock]:
    clock = Clock(100.0)
    catalog = {"m": ModelCatalogEntry("m", False, 4096, 512, 64)}
    return SchedulerCore(catalog, 100, 3.0, clock, **kwargs), clock


def worker(c: SchedulerCore, wid: str = "w1", slots: int = 1, running=()) -> list[Lease]:
    model = (c.catalog["m"], ModelSlots("m", slots, True))
    return c.register_worker(wid, f"{wid}:1", "cpu-0", [model], running=running)


def service(c: SchedulerCore, tenant: str) -> float:
    return c._queue.fair.service(Priority.MEDIUM, tenant)


def test_fairness_pays_the_tokens_generated_not_the_budget():
    c, _ = make()
    worker(c)
    c.enqueue("r", "m", Priority.MEDIUM, "a", prompt_tokens=10, max_tokens=500)
    [(_, lease)] = c.dispatch()
    assert service(c, "a") == 510  # the estimate, while it runs
    c.end_lease(lease.lease_id, Outcome.COMPLETED, Usage(prompt_tokens=12, completion_tokens=20))
    assert service(c, "a") == 32  # what the worker reports it took


def test_a_preempted_then_resumed_request_is_charged_once():
    c, _ = make()
    worker(c)
    first = c.enqueue("r", "m", Priority.MEDIUM, "a", prompt_tokens=10, max_tokens=100)
    [(_, lease)] = c.dispatch()
    c.end_lease(lease.lease_id, Outcome.PREEMPTED, Usage(prompt_tokens=10, completion_tokens=30))
    assert service(c, "a") == 40
    c.resume(replace(first, resumed=True, resumed_tokens=30))
    [(_, again)] = c.dispatch()
    assert again.resumed and service(c, "a") == 40 + 70  # no prompt again; 70 may still come
    c.end_lease(again.lease_id, Outcome.COMPLETED, Usage(prompt_tokens=40, completion_tokens=70))
    assert service(c, "a") == 10 + 30 + 70  # the prompt once, each token once


def test_a_lost_lease_is_charged_the_tokens_its_router_saw():
    c, _ = make()
    worker(c, "w1")
    worker(c, "w2")
    first = c.enqueue("r", "m", Priority.MEDIUM, "a", prompt_tokens=10, max_tokens=100)
    [(_, lease)] = c.dispatch()
    c.remove_worker(lease.worker_id)  # died without a report: its prompt is charged
    assert service(c, "a") == 10
    resumed = replace(first, resumed=True, resumed_tokens=25)
    assert c.resubmitted(resumed, lease.lease_id, Outcome.FAILED, 25) is None
    assert service(c, "a") == 35  # the 25 tokens the client got
    c.resubmitted(resumed, lease.lease_id, Outcome.FAILED, 25)  # a second report pays nothing
    assert service(c, "a") == 35


def test_a_lease_ends_once_whoever_notices_first():
    c, _ = make()
    worker(c)
    c.enqueue("r", "m", Priority.MEDIUM, "a", max_tokens=10)
    [(request, lease)] = c.dispatch()
    ended = c.resubmitted(replace(request, resumed=True), lease.lease_id, Outcome.FAILED, 3)
    assert ended == lease and c.active_leases() == 0  # the router noticed first
    assert c.end_lease(lease.lease_id, Outcome.FAILED, Usage(completion_tokens=3)) is None
    assert c.remove_worker("w1").reclaimed == []


def test_a_lease_never_seen_running_expires_after_its_start_timeout():
    c, clock = make(lease_start_timeout_s=5.0)
    worker(c, slots=2)
    for rid in ("a", "b"):
        c.enqueue(rid, "m", Priority.MEDIUM, "t")
    (_, started), (_, never) = c.dispatch()
    c.heartbeat("w1", c.workers()[0].state, running=[started.lease_id])
    clock.now += 4.0
    assert c.expire_unstarted() == []
    clock.now += 2.0
    assert c.expire_unstarted() == [never]
    assert [lease.lease_id for lease in c.leases()] == [started.lease_id]


def test_a_restarted_scheduler_adopts_running_leases_and_ends_the_vanished():
    c, _ = make()
    running = Lease("old-1", "r1", "w1", "w1:1", "cpu-0", "m", 0.0, kv_tokens=100)
    worker(c, slots=2, running=[running])
    assert [lease.lease_id for lease in c.leases()] == ["old-1"]
    assert c.workers()[0].models["m"].active == 1
    c.enqueue("r2", "m", Priority.MEDIUM, "t")
    [(_, fresh)] = c.dispatch()
    c.heartbeat("w1", c.workers()[0].state, running=[fresh.lease_id, "old-1"])
    # the worker reconnects: old-1 ended while its session was down, fresh still runs
    gone = worker(c, slots=2, running=[replace(fresh)])
    assert [lease.lease_id for lease in gone] == ["old-1"]
    assert [lease.lease_id for lease in c.leases()] == [fresh.lease_id]


def test_while_recovering_nothing_is_granted_and_resubmissions_regain_their_order():
    c, clock = make(recovery_s=2.0)
    c.enqueue("young", "m", Priority.MEDIUM, "t")  # no worker yet: still queued
    c.enqueue("old", "m", Priority.MEDIUM, "t", waited_s=30.0)  # waited before the restart
    worker(c)
    assert c.dispatch() == []  # workers may still be re-registering their leases
    clock.now += 2.0
    [(first, _)] = c.dispatch()
    assert first.request_id == "old"
