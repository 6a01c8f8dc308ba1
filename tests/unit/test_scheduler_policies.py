"""Scheduling policies of the core, each driven with an injected clock."""

import pytest

from services.common.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from services.scheduler.core.changes import FailReason
from services.scheduler.core.fairness import jain_index
from services.scheduler.core.model_placement import LoadModel, UnloadModel
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import (
    ModelCatalogEntry,
    ModelSlots,
    Outcome,
    Priority,
    Resubmission,
    RevokeLease,
    Usage,
)
from services.scheduler.core.worker_choice import make_policy
from tests.factories import Clock, make_core, ticket

GIB = 1024**3
LOW, MEDIUM, HIGH = Priority.LOW, Priority.MEDIUM, Priority.HIGH


def entry(model_id: str, memory: int = 0) -> ModelCatalogEntry:
    return ModelCatalogEntry(model_id, False, 2048, 512, 64, memory_bytes=memory)


def make(capacity: int = 100, **keys) -> tuple[SchedulerCore, Clock]:
    """A core with strict priority (no aging) unless a test sets starvation_bound_s."""
    catalog = {m: entry(m) for m in ("m", "small", "big")}
    keys = {"starvation_bound_s": 0.0} | keys
    return make_core(catalog, queue_capacity=capacity, **keys)


def worker(c: SchedulerCore, wid: str, slots: int = 1, model: str = "m", **kw) -> None:
    loadable = kw.pop("loadable", None)
    budget = kw.pop("memory_budget", 0)
    models = [(entry(model), ModelSlots(model, slots, True, **kw))] if model else []
    c.register_worker(wid, f"{wid}:1", "gpu-0", models, loadable, budget)


def submit(c: SchedulerCore, rid: str, priority: Priority, tenant: str = "t", **fields):
    model = fields.pop("model", "m")
    return c.submit(ticket(rid, model, priority, tenant, **fields))


def generated_all(lease) -> Usage:
    """What a worker reports of a request that generated all its max_tokens."""
    return Usage(completion_tokens=lease.max_tokens)


def serve_one_by_one(c: SchedulerCore, count: int) -> list[str]:
    """With one slot: completes the lease that holds it `count` times in turn (each end
    grants the next); returns whom each went to."""
    served = []
    for _ in range(count):
        [lease] = c.leases()
        served.append(lease.tenant_id)
        c.end_lease(lease.lease_id, Outcome.COMPLETED, generated_all(lease))
    return served


def serve_all(c: SchedulerCore, clock: Clock, rounds: int) -> list[str]:
    """Completes every lease held, one second apart, per round: returns whom each slot
    went to."""
    served = []
    for _ in range(rounds):
        for lease in c.leases():
            served.append(lease.tenant_id)
            clock.now += 1.0
            c.end_lease(lease.lease_id, Outcome.COMPLETED, generated_all(lease))
    return served


# -- fairness ---------------------------------------------------------------------------------
def test_a_flooding_tenant_does_not_starve_another_of_the_same_class():
    c, _clock = make(capacity=1000)
    worker(c, "w1", slots=1)
    for i in range(200):
        submit(c, f"flood{i}", MEDIUM, "flood", max_tokens=100)
    for i in range(10):
        submit(c, f"calm{i}", MEDIUM, "calm", max_tokens=100)
    served = serve_one_by_one(c, 21)[1:]  # after the flood lease running when calm came
    assert served.count("calm") == 10  # alternates although 200 flood requests came first
    assert jain_index([served.count("flood"), served.count("calm")]) == 1.0


def test_tenants_share_by_weight():
    c, _clock = make(capacity=1000)
    worker(c, "w1", slots=1)
    for i in range(300):
        submit(c, f"a{i}", LOW, "a", max_tokens=10, tenant_weight=3.0)
        submit(c, f"b{i}", LOW, "b", max_tokens=10, tenant_weight=1.0)
    served = serve_one_by_one(c, 200)
    assert served.count("a") == pytest.approx(150, abs=2)
    assert served.count("b") == pytest.approx(50, abs=2)


def test_an_idle_tenant_banks_no_credit():
    c, _clock = make(capacity=1000)
    worker(c, "w1", slots=1)
    for i in range(50):
        submit(c, f"a{i}", MEDIUM, "a", max_tokens=10)
    assert serve_one_by_one(c, 40) == ["a"] * 40  # a alone for a while
    for i in range(10):
        submit(c, f"b{i}", MEDIUM, "b", max_tokens=10)
    served = serve_one_by_one(c, 11)[1:]  # after the a lease running when b came
    assert served.count("b") == 5  # shares from now on; no catch-up burst of 10


def test_jain_index_of_equal_tenants_under_contention_is_near_one():
    c, clock = make(capacity=10_000)
    worker(c, "w1", slots=4)
    for i in range(400):
        for t in ("t1", "t2", "t3", "t4"):
            if i % (int(t[1])) == 0:  # t1 floods 4x more often than t4
                submit(c, f"{t}-{i}", MEDIUM, t, max_tokens=32)
    served = serve_all(c, clock, rounds=40)
    counts = [served.count(t) for t in ("t1", "t2", "t3", "t4")]
    assert jain_index(counts) > 0.99


# -- KV budget ------------------------------------------------------------------------------
def test_requests_wait_for_kv_room_not_just_a_slot():
    c, _ = make()
    worker(c, "w1", slots=8, kv_capacity=1000)
    granted = []
    for rid, tenant, max_tokens in (("a", "t", 500), ("b", "t", 500), ("c", "u", 200)):
        changes = submit(c, rid, MEDIUM, tenant, prompt_tokens=100, max_tokens=max_tokens)
        granted += [r.request_id for r, _ in changes.granted]
    assert granted == ["a", "c"]  # b (600) does not fit beside a (600); c (300) does
    assert c.leases()[0].kv_tokens == 600 and c.leases()[1].kv_tokens == 300


# -- placement policies ---------------------------------------------------------------------
def place(policy: str, n: int, prompts=None, workers=("w1", "w2", "w3")) -> list[str]:
    c, _ = make(capacity=1000)
    c._leases._placement = make_policy(policy, seed=7)  # seeded: the same choices each run
    for wid in workers:
        worker(c, wid, slots=100)
    out = []
    for i in range(n):
        prompt = prompts[i] if prompts else ""
        [(_, lease)] = submit(c, f"r{i}", MEDIUM, affinity_key=prompt).granted
        out.append(lease.worker_id)
        if policy != "least_loaded":
            c.end_lease(lease.lease_id, Outcome.CANCELLED)
    return out


def test_least_loaded_spreads_and_round_robin_takes_turns():
    assert sorted(place("least_loaded", 6)) == ["w1", "w1", "w2", "w2", "w3", "w3"]
    assert place("round_robin", 6) == ["w1", "w2", "w3", "w1", "w2", "w3"]


def test_random_is_seeded_and_uses_every_worker():
    first, second = place("random", 30), place("random", 30)
    assert first == second and set(first) == {"w1", "w2", "w3"}


def test_least_latency_prefers_the_fastest_worker_once_measured():
    c, _ = make(placement="least_latency")
    for wid in ("w1", "w2"):
        worker(c, wid, slots=1)
    submit(c, "probe1", MEDIUM)
    submit(c, "probe2", MEDIUM)
    first_token_ms = {"w1": 80.0, "w2": 20.0}  # reported by each worker at the lease's end
    for lease in c.leases():
        usage = Usage(time_to_first_token_ms=first_token_ms[lease.worker_id])
        c.end_lease(lease.lease_id, Outcome.COMPLETED, usage)
    [(_, lease)] = submit(c, "r", MEDIUM).granted
    assert lease.worker_id == "w2"


def test_prefix_affinity_keeps_a_prefix_on_one_worker_and_spreads_prefixes():
    prompts = [f"system prompt {i % 5}: question {i}" for i in range(40)]
    keys = [p[:16] for p in prompts]
    placed = place("prefix_affinity", 40, prompts=keys)
    by_prefix: dict[str, set[str]] = {}
    for key, wid in zip(keys, placed, strict=True):
        by_prefix.setdefault(key, set()).add(wid)
    assert all(len(ws) == 1 for ws in by_prefix.values())
    assert len({w for ws in by_prefix.values() for w in ws}) >= 2


def test_prefix_affinity_moves_only_the_keys_of_a_worker_that_left():
    keys = [f"prefix-{i}" for i in range(200)]
    before = dict(zip(keys, place("prefix_affinity", 200, keys), strict=True))
    after = dict(zip(keys, place("prefix_affinity", 200, keys, ("w1", "w2")), strict=True))
    moved = [k for k in keys if before[k] != after[k]]
    assert moved
    assert all(before[k] == "w3" for k in moved)


def test_unknown_placement_policy_is_refused():
    with pytest.raises(ValueError):
        make_policy("fastest")
    with pytest.raises(ValueError):
        make(placement="fastest")


# -- admission and degradation --------------------------------------------------------------
def test_pressure_sheds_low_first_then_medium_with_a_retry_hint():
    c, _ = make(capacity=10)
    worker(c, "w1", slots=1)
    submit(c, "running", HIGH)  # holds the one slot: the rest wait
    for i in range(7):
        submit(c, f"l{i}", LOW)
    with pytest.raises(ResourceExhausted) as low:
        submit(c, "l7", LOW)  # 7 of 10 taken: low sheds at 70%
    assert low.value.retry_after_ms > 0
    submit(c, "m0", MEDIUM)
    submit(c, "m1", MEDIUM)
    with pytest.raises(ResourceExhausted):
        submit(c, "m2", MEDIUM)  # medium sheds at 90%
    submit(c, "h0", HIGH)  # high fills the queue
    evicting = submit(c, "h1", HIGH)  # full: evicts the newest low request
    assert [(f.request.request_id, f.reason) for f in evicting.failed] == [
        ("l6", FailReason.EVICTED)
    ]
    assert isinstance(evicting.failed[0].error, ResourceExhausted)
    assert c.queue_depths() == {HIGH: 2, MEDIUM: 2, LOW: 6}


def test_retry_hint_follows_the_measured_service_rate():
    c, clock = make(capacity=10, full_retry_after_ms=1000)
    worker(c, "w1", slots=1)
    for i in range(10):  # 10 completions in 5 s: 2 per second
        [(_, lease)] = submit(c, f"r{i}", HIGH).granted
        clock.now += 0.5
        c.end_lease(lease.lease_id, Outcome.COMPLETED)
    assert c.service_rate("m") == pytest.approx(2.0, rel=0.15)
    submit(c, "running", HIGH)
    for i in range(7):
        submit(c, f"l{i}", LOW)
    with pytest.raises(ResourceExhausted) as info:
        submit(c, "late", LOW)
    assert 3000 <= info.value.retry_after_ms <= 4500  # 7 ahead at 2/s


def test_a_request_whose_deadline_cannot_be_met_is_refused_or_dropped():
    c, clock = make(capacity=100)
    worker(c, "w1", slots=1)
    for i in range(6):  # one completion a second
        [(_, lease)] = submit(c, f"r{i}", MEDIUM).granted
        clock.now += 1.0
        c.end_lease(lease.lease_id, Outcome.COMPLETED)
    assert [r.request_id for r, _ in submit(c, "hold", MEDIUM).granted] == ["hold"]
    for i in range(5):
        submit(c, f"q{i}", MEDIUM)
    with pytest.raises(DeadlineExceeded):  # 5 ahead at ~1/s: needs ~5 s, has 2
        submit(c, "hurry", MEDIUM, deadline=clock.now + 2.0)
    submit(c, "patient", MEDIUM, deadline=clock.now + 20.0)
    for _ in range(17):  # still queued behind 5, with 3 s left
        clock.now += 1.0
        c.heartbeat("w1", c.workers()[0].state, running=[x.lease_id for x in c.leases()])
    dropped = c.tick().failed
    assert [(f.request.request_id, f.reason) for f in dropped] == [
        ("patient", FailReason.DROPPED_LATE)
    ]


def test_low_priority_max_tokens_is_capped_under_load():
    c, _ = make(capacity=4, degrade_at=0.5, low_max_tokens_cap=16)
    worker(c, "w1", slots=1)
    submit(c, "running", HIGH)

    def budget(rid: str, priority: Priority) -> int:
        return submit(c, rid, priority, max_tokens=100).admitted.max_tokens

    assert budget("a", LOW) == 100
    submit(c, "b", HIGH, max_tokens=100)
    assert budget("c", LOW) == 16
    assert budget("d", HIGH) == 100


def test_fallback_to_a_smaller_model_only_when_allowed_and_needed():
    c, _ = make(fallbacks={"big": "small"})
    worker(c, "w1", slots=1, model="small")
    admitted = submit(c, "a", MEDIUM, model="big", allow_fallback=True).admitted
    assert admitted.model_id == "small"
    with pytest.raises(Unavailable):
        submit(c, "b", MEDIUM, model="big")  # not allowed: no worker has big


# -- preemption -----------------------------------------------------------------------------
def test_a_waiting_high_request_preempts_the_youngest_low_lease_once():
    c, clock = make()
    worker(c, "w1", slots=2)
    submit(c, "low-old", LOW)
    clock.now = 1.0
    [(_, young)] = submit(c, "low-young", LOW).granted
    waiting = submit(c, "high", HIGH)
    assert waiting.granted == []
    assert waiting.commands == [RevokeLease("w1", young.lease_id)]
    assert submit(c, "high2", MEDIUM).commands == []  # one is being freed already
    [(request, _)] = c.end_lease(young.lease_id, Outcome.PREEMPTED).granted
    assert request.request_id == "high"


def test_no_preemption_when_disabled_or_only_medium_holds_slots():
    c, _ = make(preemption=False)
    worker(c, "w1", slots=1)
    submit(c, "low", LOW)
    assert submit(c, "high", HIGH).commands == []
    c2, _ = make()
    worker(c2, "w1", slots=1)
    submit(c2, "medium", MEDIUM)
    assert submit(c2, "high", HIGH).commands == []


def test_a_resubmitted_request_keeps_its_place_and_arrival_time():
    c, clock = make()
    worker(c, "w1", slots=1)
    first = ticket("first", "m", LOW)
    [(_, lease)] = c.submit(first).granted
    clock.now = 5.0
    submit(c, "second", LOW)
    [(request, lease2)] = c.end_lease(lease.lease_id, Outcome.PREEMPTED).granted
    assert request.request_id == "second"  # "first" was preempted: "second" takes the slot
    resubmission = Resubmission(5.0, 0, lease.lease_id, "w1", Outcome.PREEMPTED, 0)
    c.resubmit(first, resubmission)
    submit(c, "third", LOW)
    [(again, _)] = c.end_lease(lease2.lease_id, Outcome.CANCELLED).granted
    assert again.request_id == "first" and again.enqueued_at == 0.0


# -- placement of models --------------------------------------------------------------------
def test_demand_for_an_unplaced_model_loads_it_where_memory_is_free():
    c, _ = make()
    c.catalog["big"] = entry("big", memory=40 * GIB)
    loadable = {"big": 40 * GIB, "m": 10 * GIB}
    worker(c, "w1", model="m", loadable=loadable, memory_budget=80 * GIB, memory_bytes=10 * GIB)
    accepted = submit(c, "r", MEDIUM, model="big")  # accepted: w1 can load it
    assert accepted.commands == [LoadModel("w1", "big")]
    assert submit(c, "r2", MEDIUM, model="big").commands == []  # one load at a time
    assert c.tick().commands == []


def test_cold_models_are_unloaded_to_make_room():
    c, _ = make()
    loadable = {"big": 60 * GIB, "m": 30 * GIB, "small": 10 * GIB}
    worker(c, "w1", model="m", loadable=loadable, memory_budget=80 * GIB, memory_bytes=30 * GIB)
    accepted = submit(c, "r", MEDIUM, model="big")
    assert accepted.commands == [UnloadModel("w1", "m"), LoadModel("w1", "big")]


def test_a_model_in_use_is_not_unloaded_and_a_model_nobody_can_hold_is_unavailable():
    c, _ = make()
    loadable = {"big": 60 * GIB, "m": 30 * GIB}
    worker(c, "w1", model="m", loadable=loadable, memory_budget=80 * GIB, memory_bytes=30 * GIB)
    submit(c, "busy", MEDIUM)
    assert submit(c, "r", MEDIUM, model="big").commands == []  # m holds a lease: no room
    with pytest.raises(Unavailable):
        submit(c, "x", MEDIUM, model="small")  # not loadable anywhere
