"""Local actuator configuration: the [actuator] section and the shared [[models]] catalog."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.catalog import ModelSpec, pool_catalog
from services.common.config import load_section, require
from services.common.engine_python import missing_environment
from services.common.tls import SecuritySettings


@dataclass(frozen=True)
class ActuatorConfig(SecuritySettings):
    scheduler_address: str = "127.0.0.1:50052"
    poll_interval_s: float = 1.0  # how often desired counts are read from GetStatus
    gpus: str = "auto"  # auto: every GPU NVML sees; none; or indices such as "0,1"
    cpu_slots: int = 0  # workers on the CPU at once (no GPU, or simulated models); 0: auto
    cpu_fallback: bool = True  # with every GPU taken, real models may use CPU slots
    # CPU workers one real model may have; 0: as many as the cores hold without
    # oversubscribing, cores ÷ cpu_threads_per_worker (1 with torch's default threads)
    cpu_workers_per_model: int = 0
    # threads a real model's CPU worker runs on (its WORKER_TORCH_THREADS); 0: torch's
    # default, every core, so one such worker already uses the whole machine
    cpu_threads_per_worker: int = 0
    worker_id_prefix: str = "local"  # workers are named <prefix>-<model>-<run>-<n>
    pool: str = ""  # it starts workers for the [[models]] of this pool ("": the default one)
    worker_host: str = "127.0.0.1"  # workers listen (and are reached) on this host
    worker_base_port: int = 50061  # workers listen on base, base+1, ...; 0: any free port
    metrics_base_port: int = 9093  # workers' /metrics on base, base+1, ...; 0: none
    stop_timeout_s: float = 60.0  # a draining worker still running this long is killed
    restart_backoff_s: float = 2.0  # after a worker exits on its own, first restart delay
    log_dir: str = ".run"  # one log per worker: worker-<id>.log
    log_level: str = "info"
    log_format: str = "json"
    catalog: dict[str, ModelSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.poll_interval_s > 0, "actuator.poll_interval_s must be > 0")
        require(self.cpu_slots >= 0, "actuator.cpu_slots must be >= 0")
        require(self.cpu_threads_per_worker >= 0, "actuator.cpu_threads_per_worker must be >= 0")
        require(self.stop_timeout_s > 0, "actuator.stop_timeout_s must be > 0")
        missing = missing_environment(self.catalog.values())
        require(not missing, missing)

    @property
    def cpu_per_model(self) -> int:
        """`cpu_workers_per_model`, or by default the cores ÷ the threads each worker runs:
        a worker on torch's default threads already uses every core, so a second one only
        adds contention."""
        return self.cpu_workers_per_model or cpu_workers_for(
            os.cpu_count() or 1, self.cpu_threads_per_worker
        )

    @property
    def cpu_slot_count(self) -> int:
        """`cpu_slots`, or by default half the cores (at least 1): a CPU worker runs its
        model with several threads."""
        return self.cpu_slots or max(1, (os.cpu_count() or 2) // 2)


def cpu_workers_for(cores: int, threads_per_worker: int) -> int:
    """CPU workers of one model that the cores hold without oversubscribing its threads."""
    if threads_per_worker <= 0 or threads_per_worker >= cores:
        return 1
    return cores // threads_per_worker


def load(
    data: Mapping[str, Any], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> ActuatorConfig:
    section = data.get("actuator", {})
    catalog = pool_catalog(data, section, env, "ACTUATOR", overrides)
    return load_section(ActuatorConfig, section, env, "ACTUATOR", overrides, catalog=catalog)
