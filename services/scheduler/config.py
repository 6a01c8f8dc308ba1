"""Scheduler configuration: the [scheduler] section and the shared [[models]] catalog."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.catalog import ModelSpec, parse_catalog
from services.common.config import load_section, require
from services.common.tls import SecuritySettings


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
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    log_format: str = "json"  # json (one object per line) or text
    catalog: dict[str, ModelSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.heartbeat_interval_ms >= 50, "scheduler.heartbeat_interval_ms must be >= 50")
        require(self.heartbeat_misses >= 1, "scheduler.heartbeat_misses must be >= 1")
        require(self.queue_capacity >= 1, "scheduler.queue_capacity must be >= 1")

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
