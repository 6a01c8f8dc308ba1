"""The life of a lease in the core: it ends exactly once whoever notices first, fairness pays
for the tokens really generated, and a restarted scheduler rebuilds its table and its queue
order from what workers and routers bring back."""

from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import (
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    Outcome,
    Priority,
    Resubmission,
    Usage,
)
from tests.factories import Clock, make_core, ticket


def make(**keys) -> tuple[SchedulerCore, Clock]:
    catalog = {"m": ModelCatalogEntry("m", False, 4096, 512, 64)}
    return make_core(catalog, Clock(100.0), **keys)


def worker(c: SchedulerCore, wid: str = "w1", slots: int = 1, running=()) -> list[Lease]:
    model = (c.catalog["m"], ModelSlots("m", slots, True))
    changes = c.register_worker(wid, f"{wid}:1", "cpu-0", [model], running=running)
    return [e.lease for e in changes.ended]


def service(c: SchedulerCore, tenant: str) -> float:
    return c._queue.fair.service(Priority.MEDIUM, tenant)


def again(lease: Lease, outcome: Outcome, tokens: int, generated: int = 0) -> Resubmission:
    return Resubmission(0.0, generated, lease.lease_id, lease.worker_id, outcome, tokens)


def test_fairness_pays_the_tokens_generated_not_the_budget():
    c, _ = make()
    worker(c)
    [(_, lease)] = c.submit(ticket("r", tenant_id="a", prompt_tokens=10, max_tokens=500)).granted
    assert service(c, "a") == 510  # the estimate, while it runs
    c.end_lease(lease.lease_id, Outcome.COMPLETED, Usage(prompt_tokens=12, completion_tokens=20))
    assert service(c, "a") == 32  # what the worker reports it took


def test_a_preempted_then_resumed_request_is_charged_once():
    c, _ = make()
    worker(c)
    first = ticket("r", tenant_id="a", prompt_tokens=10, max_tokens=100)
    [(_, lease)] = c.submit(first).granted
    c.end_lease(lease.lease_id, Outcome.PREEMPTED, Usage(prompt_tokens=10, completion_tokens=30))
    assert service(c, "a") == 40
    [(_, resumed)] = c.resubmit(first, again(lease, Outcome.PREEMPTED, 30, 30)).granted
    assert resumed.resumed and service(c, "a") == 40 + 70  # no prompt again; 70 may come
    c.end_lease(resumed.lease_id, Outcome.COMPLETED, Usage(prompt_tokens=40, completion_tokens=70))
    assert service(c, "a") == 10 + 30 + 70  # the prompt once, each token once


def test_a_lost_lease_is_charged_the_tokens_its_router_saw():
    c, _ = make()
    worker(c, "w1")
    worker(c, "w2")
    first = ticket("r", tenant_id="a", prompt_tokens=10, max_tokens=100)
    [(_, lease)] = c.submit(first).granted
    c.remove_worker(lease.worker_id)  # died without a report: its prompt is charged
    assert service(c, "a") == 10
    resubmitted = c.resubmit(first, again(lease, Outcome.FAILED, 25, 25))
    assert resubmitted.ended == []  # the lease had ended already: settled late, as told
    [late] = resubmitted.reconciled
    assert (late.lease, late.outcome, late.usage) == (lease, Outcome.FAILED, Usage(0, 25))
    [(_, resumed)] = resubmitted.granted
    assert service(c, "a") == 35 + 75  # the 25 tokens the client got; 75 may still come
    c.end_lease(resumed.lease_id, Outcome.CANCELLED)
    c.withdraw("r")
    assert not c.resubmit(first, again(lease, Outcome.FAILED, 25, 25)).reconciled  # told again
    assert service(c, "a") == 35 + 75  # a second report pays nothing


def test_a_lease_ends_once_whoever_notices_first():
    c, _ = make()
    worker(c)
    first = ticket("r", tenant_id="a", max_tokens=10)
    [(_, lease)] = c.submit(first).granted
    resubmitted = c.resubmit(first, again(lease, Outcome.FAILED, 3))
    [ended] = resubmitted.ended  # the router noticed first
    assert ended.lease == lease and ended.outcome is Outcome.FAILED
    assert ended.usage == Usage(completion_tokens=3)  # as the router saw it
    assert not c.end_lease(lease.lease_id, Outcome.FAILED, Usage(completion_tokens=3)).ended
    assert c.remove_worker("w1").ended == []


def test_a_failed_worker_gets_no_lease_until_it_beats_even_when_it_reported_the_end_first():
    c, _ = make()
    worker(c, "w1", slots=2)
    first = ticket("r", max_tokens=10)
    [(_, lease)] = c.submit(first).granted
    # its engine died: the worker's own end report reaches the scheduler before the router
    c.end_lease(lease.lease_id, Outcome.FAILED, Usage(completion_tokens=3))
    resubmitted = c.resubmit(first, again(lease, Outcome.FAILED, 3, 3))
    assert resubmitted.granted == []  # it waits rather than fail again on w1 at once
    [(_, resumed)] = c.heartbeat("w1", c.workers()[0].state, running=[]).granted
    assert resumed.worker_id == "w1"  # its heartbeat says it is well again


def test_a_lease_never_seen_running_expires_after_its_start_timeout():
    c, clock = make(lease_start_timeout_s=3.0)  # + 2 heartbeats of 1 s: 5 s
    worker(c, slots=2)
    c.submit(ticket("a"))
    c.submit(ticket("b"))
    started, never = c.leases()
    state = c.workers()[0].state
    for _ in range(4):
        c.heartbeat("w1", state, running=[started.lease_id])
        clock.now += 1.0
    assert c.tick().ended == []
    clock.now += 1.5
    c.heartbeat("w1", state, running=[started.lease_id])
    [expired] = c.tick().ended
    assert expired.lease == never and expired.outcome is Outcome.EXPIRED
    assert [lease.lease_id for lease in c.leases()] == [started.lease_id]


def test_a_restarted_scheduler_adopts_running_leases_and_ends_the_vanished():
    c, _ = make()
    running = Lease("old-1", "r1", "w1", "w1:1", "cpu-0", "m", 0.0, kv_tokens=100)
    model = (c.catalog["m"], ModelSlots("m", 2, True))
    adopted = c.register_worker("w1", "w1:1", "cpu-0", [model], running=[running])
    assert adopted.adopted == [running]  # counted as a lease start (metrics)
    assert [lease.lease_id for lease in c.leases()] == ["old-1"]
    assert c.workers()[0].models["m"].active == 1
    [(_, fresh)] = c.submit(ticket("r2")).granted
    c.heartbeat("w1", c.workers()[0].state, running=[fresh.lease_id, "old-1"])
    # the worker reconnects: old-1 ended while its session was down, fresh still runs
    gone = worker(c, slots=2, running=[fresh])
    assert [lease.lease_id for lease in gone] == ["old-1"]
    assert [lease.lease_id for lease in c.leases()] == [fresh.lease_id]


def test_while_recovering_nothing_is_granted_and_resubmissions_regain_their_order():
    c, clock = make(recovery_s=2.0)
    c.submit(ticket("young"))  # no worker yet: still queued
    c.submit(ticket("old"), waited_s=30.0)  # waited before the restart
    assert worker(c) == []
    assert c.leases() == []  # workers may still be re-registering their leases
    clock.now += 2.0
    [(first, _)] = c.tick().granted
    assert first.request_id == "old"


def test_a_lease_its_worker_reports_started_after_registering_is_adopted_once():
    """Granted by the scheduler before it restarted, presented after its worker registered
    with the new one: adopted, so its slot is not promised twice (review finding 16)."""
    c, _ = make()
    worker(c, slots=1)
    old = Lease("old-7", "r1", "w1", "w1:1", "cpu-0", "m", 0.0, kv_tokens=100)
    assert c.adopt_lease(old).adopted == [old]  # counted as a lease start (metrics)
    assert c.adopt_lease(old).adopted == []  # a second report changes nothing
    assert [lease.lease_id for lease in c.leases()] == ["old-7"]
    assert c.workers()[0].models["m"].active == 1
    assert c.submit(ticket("r2")).granted == []  # the one slot is taken


def test_a_session_blip_keeps_the_workers_leases_and_queue_and_each_lease_ends_once():
    """Review finding 3: its session broke for a moment and it registered again."""
    c, clock = make()  # heartbeats every 1 s, 3 missed: dead
    worker(c, slots=1)
    first = ticket("r1", tenant_id="a", prompt_tokens=10, max_tokens=100)
    [(_, lease)] = c.submit(first).granted
    c.heartbeat("w1", c.workers()[0].state, running=[lease.lease_id])
    waiting = c.submit(ticket("r2", tenant_id="a", max_tokens=10))
    assert waiting.granted == []
    blip = c.session_closed("w1")
    assert blip.ended == [] and blip.failed == []  # nothing lost, nobody told to go away
    assert [x.lease_id for x in c.leases()] == [lease.lease_id]
    clock.now += 0.5
    again = worker(c, slots=1, running=[lease])  # back, still running it
    assert again == []
    c.heartbeat("w1", c.workers()[0].state, running=[lease.lease_id])  # its first since
    ended = c.end_lease(lease.lease_id, Outcome.COMPLETED, Usage(10, 100)).ended
    assert [e.lease.lease_id for e in ended] == [lease.lease_id]
    assert c.end_lease(lease.lease_id, Outcome.COMPLETED, Usage(10, 100)).ended == []
    assert service(c, "a") == 110 + 10  # r1's tokens once, and r2's estimate (now granted)


def test_a_session_that_never_comes_back_ends_as_a_dead_worker():
    c, clock = make()  # heartbeats every 1 s; closed 3 intervals without a new session: dead
    worker(c, slots=2)
    [(_, lease)] = c.submit(ticket("r1")).granted
    c.session_closed("w1")
    assert c.submit(ticket("r2")).granted == []  # suspect from the close: no new lease
    clock.now += 2.9  # a worker reconnects within about a second: its lease kept meanwhile
    assert c.tick().ended == []
    clock.now += 0.2
    changes = c.tick()
    assert [(e.lease.lease_id, e.outcome) for e in changes.ended] == [
        (lease.lease_id, Outcome.LOST)
    ]
    assert c.workers() == []


def test_a_host_cut_off_for_a_moment_keeps_its_leases_and_none_is_recorded_lost():
    """Issue 27: silent past the heartbeat timeout, back before it is declared dead."""
    c, clock = make()
    worker(c, slots=1)
    [(_, lease)] = c.submit(ticket("r1")).granted
    c.heartbeat("w1", c.workers()[0].state, running=[lease.lease_id])
    clock.now += 3.5
    assert c.tick().ended == []  # suspect only
    back = c.heartbeat("w1", c.workers()[0].state, running=[lease.lease_id])
    assert back.ended == [] and [x.lease_id for x in c.leases()] == [lease.lease_id]
    assert not c.workers()[0].suspect


def test_a_lease_that_ended_while_its_host_was_cut_off_is_revoked_not_adopted():
    """Issue 27: its router resumed the request elsewhere; the worker comes back still
    running it: it is stopped, and it ends once."""
    c, clock = make()
    worker(c, slots=1)
    [(_, lease)] = c.submit(ticket("r1")).granted
    c.heartbeat("w1", c.workers()[0].state, running=[lease.lease_id])
    clock.now += 7.0
    assert [e.lease.lease_id for e in c.tick().ended] == [lease.lease_id]  # dead: LOST
    back = c.register_worker(
        "w1", "w1:1", "cpu-0", [(c.catalog["m"], ModelSlots("m", 1, True))], running=[lease]
    )
    assert back.adopted == [] and c.leases() == []
    assert [(x.worker_id, x.lease_id) for x in back.commands] == [("w1", lease.lease_id)]
    assert c.end_lease(lease.lease_id, Outcome.PREEMPTED).ended == []  # ended once


def test_a_lease_declared_lost_is_settled_by_its_workers_late_report_once():
    """Issue 27: the scheduler lost the worker while the lease ran on; its report comes after
    the partition heals, with the tokens that really happened."""
    c, clock = make()
    worker(c)
    [(_, lease)] = c.submit(ticket("r", tenant_id="a", prompt_tokens=10, max_tokens=100)).granted
    c.session_closed("w1")
    clock.now += 3.5
    [ended] = c.tick().ended
    assert ended.outcome is Outcome.LOST and service(c, "a") == 10  # the prompt alone
    report = ("w1", Outcome.COMPLETED, Usage(prompt_tokens=10, completion_tokens=40))
    model = (c.catalog["m"], ModelSlots("m", 1, True))
    changes = c.register_worker(
        "w1", "w1:1", "cpu-0", [model], ended=[(lease.lease_id, *report[1:])]
    )
    assert [(e.lease.lease_id, e.outcome) for e in changes.reconciled] == [
        (lease.lease_id, Outcome.COMPLETED)
    ]
    assert changes.ended == [] and service(c, "a") == 10 + 40
    assert not c.end_lease(lease.lease_id, *report[1:]).reconciled  # told again: nothing
    [(_, resumed)] = c.resubmit(
        ticket("r", tenant_id="a"), again(lease, Outcome.LOST, 40, 40)
    ).granted
    assert service(c, "a") == 10 + 40 + resumed.charged  # the router's 40 not charged again


def test_a_registration_ends_a_held_lease_as_its_worker_reports_it():
    c, _ = make()
    worker(c)
    [(_, lease)] = c.submit(ticket("r", tenant_id="a", prompt_tokens=10, max_tokens=100)).granted
    c.session_closed("w1")  # its report was lost with the session; back within the bound
    model = (c.catalog["m"], ModelSlots("m", 1, True))
    usage = Usage(prompt_tokens=10, completion_tokens=25)
    changes = c.register_worker(
        "w1", "w1:1", "cpu-0", [model], ended=[(lease.lease_id, Outcome.COMPLETED, usage)]
    )
    assert [(e.lease.lease_id, e.outcome, e.usage) for e in changes.ended] == [
        (lease.lease_id, Outcome.COMPLETED, usage)
    ]
    assert service(c, "a") == 35 and not changes.reconciled
