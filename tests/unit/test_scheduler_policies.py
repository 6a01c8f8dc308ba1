"""Scheduling policies of the core, each driven with an injected clock."""

from dataclasses import replace

import pytest

from services.common.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from services.scheduler.core.admission import AdmissionRules
from services.scheduler.core.fairness import jain_index
from services.scheduler.core.model_placement import LoadModel, UnloadModel
from services.scheduler.core.placement import make_policy
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import ModelCatalogEntry, ModelSlots, Outcome, Priority, Usage
from tests.factories import Clock

GIB = 1024**3


def entry(model_id: str, memory: int = 0) -> ModelCatalogEntry:
    return ModelCatalogEntry(model_id, False, 2048, 512, 64, memory_bytes=memory)


def make(capacity: int = 100, **kwargs) -> tuple[SchedulerCore, Clock]:
    clock = Clock()
    catalog = {m: entry(m) for m in ("m", "small", "big")}
    return SchedulerCore(catalog, capacity, 3.0, clock, **kwargs), clock


def worker(c: SchedulerCore, wid: str, slots: int = 1, model: str = "m", **kw) -> None:
    loadable = kw.pop("loadable", None)
    budget = kw.pop("memory_budget", 0)
    models = [(entry(model), ModelSlots(model, slots, True, **kw))] if model else []
    c.register_worker(wid, f"{wid}:1", "gpu-0", models, loadable, budget)


def generated_all(lease) -> Usage:
    """What a worker reports of a request that generated all its max_tokens."""
    return Usage(completion_tokens=lease.max_tokens)


def serve_one_by_one(c: SchedulerCore, count: int) -> list[str]:
    """With one slot: grants and completes `count` leases in turn; returns whom each went to."""
    served = []
    for _ in range(count):
        [(request, lease)] = c.dispatch()
        served.append(request.tenant_id)
        c.end_lease(lease.lease_id, Outcome.COMPLETED, generated_all(lease))
    return served


def serve_all(c: SchedulerCore, clock: Clock, rounds: int) -> list[str]:
    """Grants and completes one lease per round: returns whom each slot went to."""
    served = []
    for _ in range(rounds):
        for request, lease in c.dispatch():
            served.append(request.tenant_id)
            clock.now += 1.0
            c.end_lease(lease.lease_id, Outcome.COMPLETED, generated_all(lease))
    return served


# -- fairness ---------------------------------------------------------------------------------
def test_a_flooding_tenant_does_not_starve_another_of_the_same_class():
    c, _clock = make(capacity=1000)
    worker(c, "w1", slots=1)
    for i in range(200):
        c.enqueue(f"flood{i}", "m", Priority.MEDIUM, "flood", max_tokens=100)
    for i in range(10):
        c.enqueue(f"calm{i}", "m", Priority.MEDIUM, "calm", max_tokens=100)
    served = serve_one_by_one(c, 20)
    assert served.count("calm") == 10  # alternates although 200 flood requests came first
    assert jain_index([served.count("flood"), served.count("calm")]) == 1.0


def test_tenants_share_by_weight():
    c, _clock = make(capacity=1000)
    worker(c, "w1", slots=1)
    for i in range(300):
        c.enqueue(f"a{i}", "m", Priority.LOW, "a", max_tokens=10, tenant_weight=3.0)
        c.enqueue(f"b{i}", "m", Priority.LOW, "b", max_tokens=10, tenant_weight=1.0)
    served = serve_one_by_one(c, 200)
    assert served.count("a") == pytest.approx(150, abs=2)
    assert served.count("b") == pytest.approx(50, abs=2)


def test_an_idle_tenant_banks_no_credit():
    c, _clock = make(capacity=1000)
    worker(c, "w1", slots=1)
    for i in range(50):
        c.enqueue(f"a{i}", "m", Priority.MEDIUM, "a", max_tokens=10)
    assert serve_one_by_one(c, 40) == ["a"] * 40  # a alone for a while
    for i in range(10):
        c.enqueue(f"b{i}", "m", Priority.MEDIUM, "b", max_tokens=10)
    served = serve_one_by_one(c, 10)
    assert served.count("b") == 5  # shares from now on; no catch-up burst of 10


def test_jain_index_of_equal_tenants_under_contention_is_near_one():
    c, clock = make(capacity=10_000)
    worker(c, "w1", slots=4)
    for i in range(400):
        for t in ("t1", "t2", "t3", "t4"):
            if i % (int(t[1])) == 0:  # t1 floods 4x more often than t4
                c.enqueue(f"{t}-{i}", "m", Priority.MEDIUM, t, max_tokens=32)
    served = serve_all(c, clock, rounds=40)
    counts = [served.count(t) for t in ("t1", "t2", "t3", "t4")]
    assert jain_index(counts) > 0.99


# -- KV budget ------------------------------------------------------------------------------
def test_requests_wait_for_kv_room_not_just_a_slot():
    c, _ = make()
    worker(c, "w1", slots=8, kv_capacity=1000)
    c.enqueue("a", "m", Priority.MEDIUM, "t", prompt_tokens=100, max_tokens=500)
    c.enqueue("b", "m", Priority.MEDIUM, "t", prompt_tokens=100, max_tokens=500)
    c.enqueue("c", "m", Priority.MEDIUM, "u", prompt_tokens=100, max_tokens=200)
    granted = [r.request_id for r, _ in c.dispatch()]
    assert granted == ["a", "c"]  # b (600) does not fit beside a (600); c (300) does
    assert c.leases()[0].kv_tokens == 600 and c.leases()[1].kv_tokens == 300


# -- placement policies ---------------------------------------------------------------------
def place(policy: str, n: int, prompts=None, workers=("w1", "w2", "w3")) -> list[str]:
    c, _ = make(capacity=1000, placement=make_policy(policy, seed=7))
    for wid in workers:
        worker(c, wid, slots=100)
    out = []
    for i in range(n):
        prompt = prompts[i] if prompts else ""
        c.enqueue(f"r{i}", "m", Priority.MEDIUM, "t", affinity_key=prompt)
        [(_, lease)] = c.dispatch()
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
    c, _ = make(placement=make_policy("least_latency"))
    for wid in ("w1", "w2"):
        worker(c, wid, slots=1)
    c.enqueue("probe1", "m", Priority.MEDIUM, "t")
    c.enqueue("probe2", "m", Priority.MEDIUM, "t")
    first_token_ms = {"w1": 80.0, "w2": 20.0}  # reported by each worker at the lease's end
    for _, lease in c.dispatch():
        usage = Usage(time_to_first_token_ms=first_token_ms[lease.worker_id])
        c.end_lease(lease.lease_id, Outcome.COMPLETED, usage)
    c.enqueue("r", "m", Priority.MEDIUM, "t")
    [(_, lease)] = c.dispatch()
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


# -- admission and degradation --------------------------------------------------------------
def test_pressure_sheds_low_first_then_medium_with_a_retry_hint():
    c, _ = make(capacity=10)
    worker(c, "w1", slots=1)
    for i in range(7):
        c.enqueue(f"l{i}", "m", Priority.LOW, "t")
    with pytest.raises(ResourceExhausted) as low:
        c.enqueue("l7", "m", Priority.LOW, "t")  # 7 of 10 taken: low sheds at 70%
    assert low.value.retry_after_ms > 0
    c.enqueue("m0", "m", Priority.MEDIUM, "t")
    c.enqueue("m1", "m", Priority.MEDIUM, "t")
    with pytest.raises(ResourceExhausted):
        c.enqueue("m2", "m", Priority.MEDIUM, "t")  # medium sheds at 90%
    c.enqueue("h0", "m", Priority.HIGH, "t")  # high fills the queue
    c.enqueue("h1", "m", Priority.HIGH, "t")  # full: evicts the newest low request
    assert [r.request_id for r in c.take_shed()] == ["l6"]
    assert c.queue_depths() == {Priority.HIGH: 2, Priority.MEDIUM: 2, Priority.LOW: 6}


def test_retry_hint_follows_the_measured_service_rate():
    c, clock = make(capacity=10, rules=AdmissionRules(full_retry_after_ms=1000))
    worker(c, "w1", slots=1)
    for i in range(10):  # 10 completions in 5 s: 2 per second
        c.enqueue(f"r{i}", "m", Priority.HIGH, "t")
        [(_, lease)] = c.dispatch()
        clock.now += 0.5
        c.end_lease(lease.lease_id, Outcome.COMPLETED)
    assert c.service_rate("m") == pytest.approx(2.0, rel=0.15)
    for i in range(7):
        c.enqueue(f"l{i}", "m", Priority.LOW, "t")
    with pytest.raises(ResourceExhausted) as info:
        c.enqueue("late", "m", Priority.LOW, "t")
    assert 3000 <= info.value.retry_after_ms <= 4500  # 7 ahead at 2/s


def test_a_request_whose_deadline_cannot_be_met_is_refused_or_dropped():
    c, clock = make(capacity=100)
    worker(c, "w1", slots=1)
    for i in range(6):  # one completion a second
        c.enqueue(f"r{i}", "m", Priority.MEDIUM, "t")
        [(_, lease)] = c.dispatch()
        clock.now += 1.0
        c.end_lease(lease.lease_id, Outcome.COMPLETED)
    c.enqueue("hold", "m", Priority.MEDIUM, "t")
    assert [r.request_id for r, _ in c.dispatch()] == ["hold"]  # the slot stays held
    for i in range(5):
        c.enqueue(f"q{i}", "m", Priority.MEDIUM, "t")
    with pytest.raises(DeadlineExceeded):  # 5 ahead at ~1/s: needs ~5 s, has 2
        c.enqueue("hurry", "m", Priority.MEDIUM, "t", deadline=clock.now + 2.0)
    c.enqueue("patient", "m", Priority.MEDIUM, "t", deadline=clock.now + 20.0)
    clock.now += 17.0  # still queued behind 5, with 3 s left
    assert [r.request_id for r in c.drop_late()] == ["patient"]


def test_low_priority_max_tokens_is_capped_under_load():
    rules = AdmissionRules(degrade_at=0.5, low_max_tokens_cap=16)
    c, _ = make(capacity=4, rules=rules)
    worker(c, "w1", slots=1)
    assert c.enqueue("a", "m", Priority.LOW, "t", max_tokens=100).max_tokens == 100
    c.enqueue("b", "m", Priority.HIGH, "t", max_tokens=100)
    assert c.enqueue("c", "m", Priority.LOW, "t", max_tokens=100).max_tokens == 16
    assert c.enqueue("d", "m", Priority.HIGH, "t", max_tokens=100).max_tokens == 100


def test_fallback_to_a_smaller_model_only_when_allowed_and_needed():
    rules = AdmissionRules(fallbacks={"big": "small"})
    c, _ = make(rules=rules)
    worker(c, "w1", slots=1, model="small")
    assert c.enqueue("a", "big", Priority.MEDIUM, "t", allow_fallback=True).model_id == "small"
    with pytest.raises(Unavailable):
        c.enqueue("b", "big", Priority.MEDIUM, "t")  # not allowed: no worker has big


# -- preemption -----------------------------------------------------------------------------
def test_a_waiting_high_request_preempts_the_youngest_low_lease_once():
    c, clock = make()
    worker(c, "w1", slots=2)
    c.enqueue("low-old", "m", Priority.LOW, "t")
    c.dispatch()
    clock.now = 1.0
    c.enqueue("low-young", "m", Priority.LOW, "t")
    [(_, young)] = c.dispatch()
    c.enqueue("high", "m", Priority.HIGH, "t")
    assert c.dispatch() == []
    [victim] = c.preemptions()
    assert victim.lease_id == young.lease_id
    assert c.preemptions() == []  # one is being freed already for the one high request
    c.end_lease(victim.lease_id, Outcome.CANCELLED)
    [(request, _)] = c.dispatch()
    assert request.request_id == "high"


def test_no_preemption_when_disabled_or_only_medium_holds_slots():
    c, _ = make(preemption=False)
    worker(c, "w1", slots=1)
    c.enqueue("low", "m", Priority.LOW, "t")
    c.dispatch()
    c.enqueue("high", "m", Priority.HIGH, "t")
    assert c.preemptions() == []
    c2, _ = make()
    worker(c2, "w1", slots=1)
    c2.enqueue("medium", "m", Priority.MEDIUM, "t")
    c2.dispatch()
    c2.enqueue("high", "m", Priority.HIGH, "t")
    assert c2.preemptions() == []


def test_a_requeued_request_keeps_its_place_and_arrival_time():
    c, clock = make()
    worker(c, "w1", slots=1)
    first = c.enqueue("first", "m", Priority.LOW, "t")
    [(_, lease)] = c.dispatch()
    clock.now = 5.0
    c.enqueue("second", "m", Priority.LOW, "t")
    c.end_lease(lease.lease_id, Outcome.CANCELLED)  # preempted: "second" takes the slot
    [(request, lease2)] = c.dispatch()
    c.resume(replace(first, resumed=True))
    c.end_lease(lease2.lease_id, Outcome.CANCELLED)
    [(again, _)] = c.dispatch()
    assert again.request_id == "first" and again.enqueued_at == 0.0
    assert request.request_id == "second"


# -- placement of models --------------------------------------------------------------------
def test_demand_for_an_unplaced_model_loads_it_where_memory_is_free():
    c, _ = make()
    c.catalog["big"] = entry("big", memory=40 * GIB)
    loadable = {"big": 40 * GIB, "m": 10 * GIB}
    worker(c, "w1", model="m", loadable=loadable, memory_budget=80 * GIB, memory_bytes=10 * GIB)
    c.enqueue("r", "big", Priority.MEDIUM, "t")  # accepted: w1 can load it
    assert c.plan_placement() == [LoadModel("w1", "big")]
    assert c.plan_placement() == []  # one load at a time


def test_cold_models_are_unloaded_to_make_room():
    c, _ = make()
    loadable = {"big": 60 * GIB, "m": 30 * GIB, "small": 10 * GIB}
    worker(c, "w1", model="m", loadable=loadable, memory_budget=80 * GIB, memory_bytes=30 * GIB)
    c.enqueue("r", "big", Priority.MEDIUM, "t")
    assert c.plan_placement() == [UnloadModel("w1", "m"), LoadModel("w1", "big")]


def test_a_model_in_use_is_not_unloaded_and_a_model_nobody_can_hold_is_unavailable():
    c, _ = make()
    loadable = {"big": 60 * GIB, "m": 30 * GIB}
    worker(c, "w1", model="m", loadable=loadable, memory_budget=80 * GIB, memory_bytes=30 * GIB)
    c.enqueue("busy", "m", Priority.MEDIUM, "t")
    c.dispatch()
    c.enqueue("r", "big", Priority.MEDIUM, "t")
    assert c.plan_placement() == []  # m holds a lease: no room for big yet
    with pytest.raises(Unavailable):
        c.enqueue("x", "small", Priority.MEDIUM, "t")  # not loadable anywhere
