"""Autoscaling policy: how many workers each model should have.

`recommend` is a pure function of one model's load (`ModelLoad`) and the policy: the worker
count that would run the model's demand at the target slot utilization, raised when the
estimated wait of some priority class passes its bound. `Autoscaler` adds the two rules
that keep the count from flapping, with an injected clock:

- scale up at once: a recommendation above the current count is taken immediately, but a
  step up made only because a wait bound was passed happens at most once per
  `scale_up_cooldown_s` (a new worker needs time to start before it can lower the wait);
- scale down late: the count follows the *highest* recommendation of the last
  `scale_down_cooldown_s`, so it falls only after the load has stayed low that long (the
  stabilization window of Kubernetes' HPA). Idle models with `min_workers = 0` reach zero
  the same way; a request that then arrives recommends one worker at once.

After a scheduler (re)start, workers come back one heartbeat session at a time, so for
`warmup_s` the counts it sees are too low: its decisions are not `settled` (not to be acted
on), and it records at least the workers it sees, so that a fleet found at restart is kept
through one scale-down cool-down rather than cut to what had re-registered.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from services.common.config import require
from services.scheduler.core.types import Priority


@dataclass(frozen=True)
class ScalingBounds:
    """Worker count limits of one model. `min_workers = 0` allows scale to zero."""

    min_workers: int = 0
    max_workers: int = 1


# Fields set from elsewhere than the config file: the loader leaves them alone.
NOT_CONFIGURED = {"config": False}


@dataclass(frozen=True)
class ScalingPolicy:
    """`[scheduler.autoscaling]`: desired workers per model (metric and GetStatus) are always
    computed; `enabled` says an actuator follows them, so a model with max_workers > 0 and no
    worker is queued (a worker is coming) rather than refused."""

    enabled: bool = False
    target_utilization: float = 0.7  # busy slots ÷ slots the fleet should run at
    tolerance: float = 0.1  # fractions of a worker this small are not worth one more (HPA's)
    max_wait_high_s: float = 1.0  # a class whose wait passes its bound adds a worker
    max_wait_medium_s: float = 5.0
    max_wait_low_s: float = 30.0
    scale_up_cooldown_s: float = 15.0  # between steps up made for a passed wait bound
    scale_down_cooldown_s: float = 60.0  # load must stay low this long before a step down
    # after a start, decisions are not settled this long while workers re-register (their
    # sessions retry every 5 s at most), so a restart does not scale the fleet down
    warmup_s: float = 10.0
    cold_start_timeout_s: float = 120.0  # longest wait for a model's first worker
    arrival_window_s: float = 10.0  # arrival rates behind scaling decisions cover this long
    # per model, from its [[models]] entry's min_workers / max_workers
    bounds: Mapping[str, ScalingBounds] = field(default_factory=dict, metadata=NOT_CONFIGURED)
    default_bounds: ScalingBounds = field(default_factory=ScalingBounds, metadata=NOT_CONFIGURED)

    def __post_init__(self) -> None:
        require(0 < self.target_utilization <= 1, "target_utilization must be in (0, 1]")
        require(self.scale_down_cooldown_s >= 0, "scale_down_cooldown_s must be >= 0")

    def bounds_of(self, model_id: str) -> ScalingBounds:
        return self.bounds.get(model_id, self.default_bounds)

    def max_wait_s(self, priority: Priority) -> float:
        """The longest a class should wait before its model gets one more worker."""
        return {
            Priority.HIGH: self.max_wait_high_s,
            Priority.MEDIUM: self.max_wait_medium_s,
            Priority.LOW: self.max_wait_low_s,
        }[priority]


@dataclass(frozen=True)
class ModelLoad:
    """What the scheduler sees of one model at one instant."""

    model_id: str
    workers: int  # workers that serve the model or are loading it, draining ones excluded
    slots_per_worker: int  # concurrent sequences one worker runs for the model (>= 1)
    busy: int  # leases held now
    queued: Mapping[Priority, int]  # requests waiting, per class
    oldest_wait_s: Mapping[Priority, float]  # age of the oldest waiting request, per class
    arrival_rate: float = 0.0  # requests admitted per second, recent window
    service_rate: float | None = None  # completions per second, recent window; None: unknown
    mean_service_s: float | None = None  # mean lease duration of completed requests

    @property
    def queued_total(self) -> int:
        return sum(self.queued.values())


@dataclass(frozen=True)
class Recommendation:
    desired: int  # within the model's bounds
    reason: str  # what decided it: idle, utilization, arrival_rate, wait_bound, min, max
    utilization: float  # busy slots ÷ slots now (0 with no worker)
    wait_exceeded: bool  # some class's estimated wait passed its bound


def recommend(load: ModelLoad, policy: ScalingPolicy) -> Recommendation:
    """The worker count for `load` before any cool-down: enough slots to run the requests
    held and waiting (and the arrival rate, by Little's law) at the target utilization; at
    least one more than now when a class's estimated wait passes its bound; within bounds."""
    per_worker = max(1, load.slots_per_worker) * policy.target_utilization
    slots = load.workers * max(1, load.slots_per_worker)
    utilization = load.busy / slots if slots else 0.0
    demand = load.busy + load.queued_total
    desired, reason = _workers_for(demand / per_worker, policy.tolerance), "utilization"
    if load.arrival_rate > 0 and load.mean_service_s:
        in_service = load.arrival_rate * load.mean_service_s  # Little's law: L = λ·W
        by_rate = _workers_for(in_service / per_worker, policy.tolerance)
        if by_rate > desired:
            desired, reason = by_rate, "arrival_rate"
    wait_exceeded = _wait_exceeded(load, policy)
    if wait_exceeded and desired <= load.workers:
        desired, reason = load.workers + 1, "wait_bound"
    if demand == 0 and desired == 0:
        reason = "idle"
    bounds = policy.bounds_of(load.model_id)
    if desired < bounds.min_workers:
        desired, reason = bounds.min_workers, "min"
    elif desired > bounds.max_workers:
        desired, reason = bounds.max_workers, "max"
    return Recommendation(desired, reason, utilization, wait_exceeded)


def _workers_for(workers: float, tolerance: float) -> int:
    """Whole workers for a fractional need, ignoring a remainder under `tolerance` (but any
    need at all takes one worker)."""
    return max(1, math.ceil(workers - tolerance)) if workers > 0 else 0


def _wait_exceeded(load: ModelLoad, policy: ScalingPolicy) -> bool:
    """Whether some class's wait passes its bound: the oldest request's age, or the
    estimated wait of a new arrival behind everything of its class and above."""
    ahead = 0
    for priority in Priority:  # high first: a class waits behind the ones above it
        queued = load.queued.get(priority, 0)
        ahead += queued
        if not queued:
            continue
        bound = policy.max_wait_s(priority)
        if bound is None:
            continue
        if load.oldest_wait_s.get(priority, 0.0) > bound:
            return True
        if load.service_rate and ahead / load.service_rate > bound:
            return True
    return False


@dataclass(frozen=True)
class ScalingDecision:
    desired: int  # after the cool-down rules
    recommendation: Recommendation  # before them
    load: ModelLoad  # what it was decided from
    settled: bool = True  # False during the warm-up after a start: not to be acted on

    @property
    def model_id(self) -> str:
        return self.load.model_id

    @property
    def current(self) -> int:
        """Workers now."""
        return self.load.workers


@dataclass
class _ModelHistory:
    desired: int = 0
    last_step_up: float = -math.inf
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, recommended)


class Autoscaler:
    """Turns recommendations into desired counts that do not flap (see module docstring)."""

    def __init__(self, policy: ScalingPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        self._history: dict[str, _ModelHistory] = {}
        self._started = clock()

    def decide(self, load: ModelLoad) -> ScalingDecision:
        now = self._clock()
        history = self._history.get(load.model_id)
        if history is None:
            history = self._history[load.model_id] = _ModelHistory(desired=load.workers)
        rec = recommend(load, self.policy)
        wanted = rec.desired
        warming = now - self._started < self.policy.warmup_s
        if warming:  # workers are still re-registering: keep at least those seen
            wanted = max(wanted, load.workers)
        if rec.reason == "wait_bound":
            # one step per cool-down: until then hold the last count (a worker may be starting)
            if now - history.last_step_up < self.policy.scale_up_cooldown_s:
                wanted = min(wanted, max(history.desired, load.workers))
            else:
                wanted = max(wanted, history.desired + 1)
                wanted = min(wanted, self.policy.bounds_of(load.model_id).max_workers)
        history.recent.append((now, wanted))
        while history.recent and now - history.recent[0][0] > self.policy.scale_down_cooldown_s:
            history.recent.popleft()
        desired = max(w for _, w in history.recent)  # falls only once the window is low
        if desired > history.desired:
            history.last_step_up = now
        history.desired = desired
        return ScalingDecision(desired, rec, load, not warming)
