"""The autoscaling policy, driven through load steps with an injected clock."""

import itertools
from dataclasses import replace

import pytest

from services.common.errors import Unavailable
from services.scheduler.core.autoscaling import (
    Autoscaler,
    ModelLoad,
    ScalingBounds,
    ScalingPolicy,
    recommend,
)
from services.scheduler.core.changes import FailReason
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.types import ModelCatalogEntry, ModelSlots, Priority, WorkerState
from tests.factories import Clock, make_core, ticket


def policy(**kwargs) -> ScalingPolicy:
    kwargs.setdefault("default_bounds", ScalingBounds(0, 10))
    kwargs.setdefault("warmup_s", 0.0)
    kwargs.setdefault("scale_down_cooldown_s", 60.0)
    kwargs.setdefault("scale_up_cooldown_s", 15.0)
    return ScalingPolicy(target_utilization=0.75, **kwargs)


def load(workers: int, busy: int, queued: int = 0, oldest: float = 0.0, **kw) -> ModelLoad:
    return ModelLoad(
        model_id="m",
        workers=workers,
        slots_per_worker=4,
        busy=busy,
        queued={Priority.MEDIUM: queued},
        oldest_wait_s={Priority.MEDIUM: oldest},
        **kw,
    )


class Fleet:
    """A fleet that follows the autoscaler's decisions at once, fed a steady load of
    `demand` concurrent requests (busy up to the slots, the rest queued)."""

    def __init__(self, scaler: Autoscaler, clock: Clock, workers: int = 1) -> None:
        self.scaler, self.clock, self.workers = scaler, clock, workers
        self.history: list[int] = []

    def run(self, demand: int, seconds: int) -> list[int]:
        seen = []
        for _ in range(seconds):
            busy = min(demand, self.workers * 4)
            decision = self.scaler.decide(load(self.workers, busy, demand - busy))
            self.workers = decision.desired
            seen.append(self.workers)
            self.clock.now += 1.0
        self.history += seen
        return seen


def test_recommends_enough_workers_for_the_target_utilization():
    assert recommend(load(1, 4, 8), policy()).desired == 4  # 12 ÷ (4 × 0.75)
    assert recommend(load(4, 3), policy()).desired == 1
    assert recommend(load(2, 0), policy()).reason == "idle"
    assert recommend(load(2, 0), policy()).desired == 0


def test_one_request_for_a_model_scaled_to_zero_asks_for_a_worker_at_once():
    wide = ModelLoad("m", 0, 32, 0, {Priority.LOW: 1}, {Priority.LOW: 0.0})
    rec = recommend(wide, policy())  # 1 ÷ (32 × 0.75) is a small fraction of a worker
    assert (rec.desired, rec.reason) == (1, "utilization")


def test_recommendation_stays_within_the_model_bounds():
    bounded = policy(bounds={"m": ScalingBounds(2, 3)})
    assert recommend(load(2, 0), bounded).desired == 2
    assert recommend(load(2, 0), bounded).reason == "min"
    assert recommend(load(3, 12, 40), bounded).desired == 3
    assert recommend(load(3, 12, 40), bounded).reason == "max"


def test_arrival_rate_by_littles_law_can_ask_for_more_than_the_queue_shows():
    # 6 req/s × 2 s each = 12 in service: 4 workers at 75 % of 4 slots
    rec = recommend(load(1, 3, arrival_rate=6.0, mean_service_s=2.0), policy())
    assert (rec.desired, rec.reason) == (4, "arrival_rate")


def test_a_passed_wait_bound_adds_a_worker_even_when_utilization_looks_fine():
    # long generations: 2 waiting on 1 worker is under target, but they have waited 8 s
    rec = recommend(load(2, 4, 2, oldest=8.0), policy())
    assert (rec.desired, rec.reason, rec.wait_exceeded) == (3, "wait_bound", True)
    # estimated wait from the service rate: 30 ahead at 2/s is 15 s > 5 s for medium
    rec = recommend(load(10, 40, 2, service_rate=0.1), policy())
    assert rec.wait_exceeded


def test_load_step_scales_up_at_once_holds_then_scales_down_after_the_cool_down():
    clock = Clock()
    fleet = Fleet(Autoscaler(policy(), clock), clock)
    assert fleet.run(demand=2, seconds=10)[-1] == 1
    up = fleet.run(demand=24, seconds=5)
    assert up[0] == 8  # 24 ÷ (4 × 0.75), in the first decision after the step
    hold = fleet.run(demand=2, seconds=59)
    assert set(hold) == {8}, "no step down inside the cool-down"
    down = fleet.run(demand=2, seconds=5)
    assert down[-1] == 1
    idle = fleet.run(demand=0, seconds=61)
    assert idle[-1] == 0, "an idle model with min 0 scales to zero"
    assert fleet.run(demand=1, seconds=1) == [1], "the first request scales it from zero"


def test_no_flapping_under_a_load_that_oscillates():
    clock = Clock()
    fleet = Fleet(Autoscaler(policy(), clock), clock)
    for _ in range(20):  # 5 s at 12 requests, 5 s at 3: 10 s periods, 200 s in all
        fleet.run(demand=12, seconds=5)
        fleet.run(demand=3, seconds=5)
    counts = [1, *fleet.history]  # it started with one worker
    changes = sum(1 for a, b in itertools.pairwise(counts) if a != b)
    assert changes == 1, f"one step up, then steady: {counts[:30]}"
    assert fleet.workers == 4


def test_wait_bound_steps_up_once_per_cool_down_while_workers_start():
    clock = Clock()
    scaler = Autoscaler(policy(), clock)
    desired = []
    for second in range(40):
        # the fleet does not grow (the new workers are still starting): waits keep passing
        decision = scaler.decide(load(2, 4, 2, oldest=6.0 + second))
        desired.append(decision.desired)
        clock.now += 1.0
    assert desired[0] == 3
    assert desired[14] == 3 and desired[15] == 4 and desired[30] == 5
    assert max(desired) == 5


def core_with(clock: Clock, **keys) -> SchedulerCore:
    catalog = {"m": ModelCatalogEntry("m", True, 2048, 512, 64, max_slots=4)}
    core, _ = make_core(catalog, clock)
    settings = replace(core.settings, autoscaling=policy(**keys))
    return SchedulerCore(catalog, clock, settings)


def test_scaled_to_zero_requests_wait_for_a_worker_or_get_unavailable_before_the_deadline():
    clock = Clock()
    core = core_with(clock, enabled=True)  # an actuator starts workers: requests wait
    core.submit(ticket("r1", priority=Priority.HIGH, deadline=10.0))
    core.submit(ticket("r2", priority=Priority.HIGH, deadline=30.0))
    [decision] = core.tick().scaling
    assert (decision.current, decision.desired) == (0, 1)
    clock.now = 9.5  # within a heartbeat (1 s) of r1's deadline
    cold = core.tick().failed
    assert [(f.request.request_id, f.reason) for f in cold] == [("r1", FailReason.COLD_EXPIRED)]
    registered = core.register_worker(
        "w", "w:1", "gpu-0", [(core.model("m"), ModelSlots("m", 4, True))]
    )
    assert [r.request_id for r, _ in registered.granted] == ["r2"]
    assert core.tick().failed == []


def test_a_model_nobody_starts_workers_for_is_refused_when_it_has_none():
    core = core_with(Clock())
    with pytest.raises(Unavailable):
        core.submit(ticket("r1", priority=Priority.HIGH))


def test_core_counts_loading_workers_and_not_draining_ones():
    clock = Clock()
    core = core_with(clock)
    entry = core.model("m")
    core.register_worker("a", "a:1", "gpu-0", [(entry, ModelSlots("m", 4, True))])
    core.register_worker("b", "b:1", "gpu-1", [(entry, ModelSlots("m", 4, False))])
    core.register_worker("c", "c:1", "gpu-2", [(entry, ModelSlots("m", 4, True))])
    core.heartbeat("c", WorkerState.DRAINING)
    [decision] = core.tick().scaling
    assert decision.current == 2


def test_after_a_restart_the_fleet_that_comes_back_is_kept_through_a_cool_down():
    clock = Clock()
    scaler = Autoscaler(policy(warmup_s=10.0), clock)
    seen = []
    for second in range(80):
        back = min(4, second // 2)  # four idle workers re-register over 8 s
        decision = scaler.decide(load(back, 0))
        seen.append((decision.settled, decision.desired))
        clock.now += 1.0
    assert not any(settled for settled, _ in seen[:10]), "nothing to act on while warming up"
    assert seen[10] == (True, 4), "the fleet found at restart is kept ..."
    assert seen[69][1] == 4 and seen[71][1] == 0, "... until a cool-down after the warm-up"


def test_a_small_remainder_is_not_worth_another_worker():
    # 8.2 requests on 4-slot workers at 100 %: 2.05 workers → 2 (tolerance 0.1)
    full = policy(default_bounds=ScalingBounds(0, 10))
    full = ScalingPolicy(target_utilization=1.0, warmup_s=0.0, default_bounds=full.default_bounds)
    rec = recommend(load(2, 8, arrival_rate=4.1, mean_service_s=2.0), full)
    assert rec.desired == 2
    rec = recommend(load(2, 8, arrival_rate=4.6, mean_service_s=2.0), full)
    assert rec.desired == 3
