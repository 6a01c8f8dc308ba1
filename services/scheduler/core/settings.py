"""The core's settings, one frozen dataclass per concern, each default stated here once.

The scheduler's config file has one section per dataclass (`[scheduler.admission]`,
`[scheduler.dispatch]`, `[scheduler.autoscaling]`) that loads straight into it; the core
reads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import require
from services.scheduler.core.admission import AdmissionRules
from services.scheduler.core.autoscaling import ScalingPolicy
from services.scheduler.core.liveness import SilenceBounds
from services.scheduler.core.worker_choice import POLICIES


@dataclass(frozen=True)
class DispatchRules:
    """`[scheduler.dispatch]`: which waiting request gets which slot, and when."""

    # kv_aware, or least_loaded, round_robin, random, least_latency, prefix_affinity
    placement: str = "kv_aware"
    preemption: bool = True  # a waiting high request may stop (and later resume) a low one
    starvation_bound_s: float = 30.0  # waited this long, a request goes first; 0: off
    lease_start_timeout_s: float = 10.0  # a granted lease must reach its worker within this
    # after a start, no lease is granted this long: workers re-register the leases they run
    # (reconnecting within about a second) and routers resubmit the requests they hold, which
    # take their places by arrival time
    recovery_s: float = 2.0
    load_timeout_s: float = 300.0  # a model load not seen by then may be placed again

    def __post_init__(self) -> None:
        require(self.placement in POLICIES, f"placement: one of {sorted(POLICIES)}")
        require(self.lease_start_timeout_s > 0, "lease_start_timeout_s must be > 0")
        require(self.recovery_s >= 0, "recovery_s must be >= 0")


@dataclass(frozen=True)
class CoreSettings:
    """Everything SchedulerCore is configured with. `heartbeat_s`: how often workers report;
    the timeouts that wait on heartbeats derive from it."""

    heartbeat_s: float
    heartbeat_misses: int  # a worker silent this many intervals (past its quiet ones): suspect
    # intervals in a row a worker whose report did not change lets pass without a heartbeat
    # (its session's transport is watched meanwhile); 0: a heartbeat every interval
    quiet_heartbeats: int
    admission: AdmissionRules = field(default_factory=AdmissionRules)
    dispatch: DispatchRules = field(default_factory=DispatchRules)
    autoscaling: ScalingPolicy = field(default_factory=ScalingPolicy)

    @property
    def heartbeat_timeout_s(self) -> float:
        """A worker with an open session silent this long takes no new lease (suspect): its
        quiet intervals, then `heartbeat_misses` more."""
        return self.heartbeat_s * (self.quiet_heartbeats + self.heartbeat_misses)

    @property
    def silence_bounds(self) -> SilenceBounds:
        """Silent twice the timeout, a worker is removed and its leases end LOST; until then a
        host cut off for a moment keeps its place and its leases (routers resume any stream
        they lost on their own, within seconds). One whose session closed (its transport's
        pings went unanswered, or the stream broke) is removed `heartbeat_misses` intervals
        later unless it registers again: a worker reconnects within about a second."""
        return SilenceBounds(
            self.heartbeat_timeout_s,
            2 * self.heartbeat_timeout_s,
            self.heartbeat_s * self.heartbeat_misses,
        )

    @property
    def lease_expiry_s(self) -> float:
        """An unpresented lease is reclaimed once its worker's heartbeats would have shown
        it running: its start-by time plus two heartbeats."""
        return self.dispatch.lease_start_timeout_s + 2 * self.heartbeat_s

    @property
    def cold_start_margin_s(self) -> float:
        """UNAVAILABLE must reach a client before its deadline: two sweeps ahead, or more."""
        return max(0.5, self.heartbeat_s)
