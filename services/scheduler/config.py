"""Scheduler configuration: the [scheduler] section and the shared [[models]] catalog."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.catalog import ModelSpec, parse_catalog
from services.common.config import load_section, require
from services.common.tls import SecuritySettings
from services.scheduler.core.admission import AdmissionRules
from services.scheduler.core.autoscaling import ScalingBounds, ScalingPolicy
from services.scheduler.core.placement import POLICIES
from services.scheduler.core.types import Priority


@dataclass(frozen=True)
class SchedulerConfig(SecuritySettings):
    listen: str = "127.0.0.1:50052"
    metrics_listen: str = "127.0.0.1:9092"  # Prometheus /metrics; empty: off
    fairness_window_s: float = 60.0  # Jain's index covers tokens served this long ago
    heartbeat_interval_ms: int = 1000
    heartbeat_misses: int = 3  # a worker silent this many intervals is declared dead
    queue_capacity: int = 1024
    full_retry_after_ms: int = 1000
    starvation_bound_s: float = 30.0  # a request waiting this long goes before younger ones
    placement: str = "least_loaded"  # or round_robin, random, least_latency, prefix_affinity
    preemption: bool = True  # a waiting high request may stop (and later resume) a low one
    max_resumes: int = 3  # for Schedule (deprecated); routers have their own max_resumes
    lease_start_timeout_s: float = 10.0  # a granted lease must reach its worker within this
    # after a start, no lease is granted this long: workers re-register the leases they run
    # (reconnecting within about a second) and routers resubmit the requests they hold, which
    # take their places by arrival time
    recovery_s: float = 2.0
    shed_low_at: float = 0.7  # queue fill from which new low requests are refused
    shed_medium_at: float = 0.9  # ... and medium ones; high ones fill it, then evict lower
    degrade_at: float = 0.5  # queue fill from which the degradation rules apply
    low_max_tokens_cap: int = 0  # under load, low priority's max_tokens is capped; 0: off
    fallbacks: dict[str, str] = field(default_factory=dict)  # model → smaller model, opt-in
    rate_window_s: float = 30.0  # service rates behind wait estimates cover this long
    load_timeout_s: float = 300.0  # a model load not seen by then may be placed again
    # autoscaling: desired workers per model (metric and GetStatus) are always computed;
    # `autoscaling = true` says an actuator follows them, so a model with max_workers > 0
    # and no worker is queued (a worker is coming) rather than refused
    autoscaling: bool = False
    target_utilization: float = 0.7  # busy slots ÷ slots the fleet should run at
    max_wait_high_s: float = 1.0  # a class whose wait passes its bound adds a worker
    max_wait_medium_s: float = 5.0
    max_wait_low_s: float = 30.0
    scale_up_cooldown_s: float = 15.0  # between steps up for a passed wait bound
    scale_down_cooldown_s: float = 60.0  # load must stay low this long before a step down
    cold_start_timeout_s: float = 120.0  # longest wait for a model's first worker
    arrival_window_s: float = 10.0  # arrival rates behind scaling decisions cover this long
    # after a start, desired counts are withheld this long while workers re-register (their
    # sessions retry every 5 s at most), so a restart does not scale the fleet down
    scaling_warmup_s: float = 10.0
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    log_format: str = "json"  # json (one object per line) or text
    catalog: dict[str, ModelSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.require_secret("scheduler", self.listen)
        require(self.heartbeat_interval_ms >= 50, "scheduler.heartbeat_interval_ms must be >= 50")
        require(self.heartbeat_misses >= 1, "scheduler.heartbeat_misses must be >= 1")
        require(self.queue_capacity >= 1, "scheduler.queue_capacity must be >= 1")
        require(self.placement in POLICIES, f"scheduler.placement: one of {sorted(POLICIES)}")
        require(self.max_resumes >= 0, "scheduler.max_resumes must be >= 0")
        require(self.lease_start_timeout_s > 0, "scheduler.lease_start_timeout_s must be > 0")
        require(self.recovery_s >= 0, "scheduler.recovery_s must be >= 0")
        require(0 < self.target_utilization <= 1, "scheduler.target_utilization: in (0, 1]")
        require(self.scale_down_cooldown_s >= 0, "scheduler.scale_down_cooldown_s must be >= 0")
        for name in ("shed_low_at", "shed_medium_at", "degrade_at"):
            require(0 < getattr(self, name) <= 1, f"scheduler.{name} must be in (0, 1]")
        for model_id, fallback in self.fallbacks.items():
            require(
                model_id in self.catalog and fallback in self.catalog,
                f"scheduler.fallbacks: {model_id!r} → {fallback!r} must name [[models]]",
            )

    def admission_rules(self) -> AdmissionRules:
        return AdmissionRules(
            shed_at={
                Priority.HIGH: 1.0,
                Priority.MEDIUM: self.shed_medium_at,
                Priority.LOW: self.shed_low_at,
            },
            full_retry_after_ms=self.full_retry_after_ms,
            degrade_at=self.degrade_at,
            low_max_tokens_cap=self.low_max_tokens_cap,
            fallbacks=dict(self.fallbacks),
        )

    def scaling_policy(self) -> ScalingPolicy:
        return ScalingPolicy(
            target_utilization=self.target_utilization,
            max_wait_s={
                Priority.HIGH: self.max_wait_high_s,
                Priority.MEDIUM: self.max_wait_medium_s,
                Priority.LOW: self.max_wait_low_s,
            },
            scale_up_cooldown_s=self.scale_up_cooldown_s,
            scale_down_cooldown_s=self.scale_down_cooldown_s,
            warmup_s=self.scaling_warmup_s,
            bounds={
                m: ScalingBounds(spec.min_workers, spec.max_workers)
                for m, spec in self.catalog.items()
            },
        )

    def autoscaled_models(self) -> frozenset[str]:
        """Models an actuator starts workers for (none unless `autoscaling` is on)."""
        if not self.autoscaling:
            return frozenset()
        return frozenset(m for m, spec in self.catalog.items() if spec.max_workers > 0)

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.heartbeat_interval_ms * self.heartbeat_misses / 1000.0


def load(
    data: Mapping[str, Any], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> SchedulerConfig:
    return load_section(
        SchedulerConfig,
        data.get("scheduler", {}),
        env,
        "SCHEDULER",
        overrides,
        catalog=parse_catalog(data.get("models", [])),
    )
