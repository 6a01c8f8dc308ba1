"""Scheduler configuration: the [scheduler] section, its nested sections and the [[models]]
catalog.

The core's settings load straight into its own frozen dataclasses, where each default is
stated once: `[scheduler.admission]` (core.admission.AdmissionRules), `[scheduler.dispatch]`
(core.settings.DispatchRules) and `[scheduler.autoscaling]` (core.autoscaling.ScalingPolicy).
The flat keys of earlier releases (`[scheduler] queue_capacity = …`) still load, each with a
deprecation warning naming its new place.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from services.common.catalog import ModelSpec, pool_catalog
from services.common.config import ConfigError, load_section, require
from services.common.lease_token import LeaseKeyError, LeaseSigner
from services.common.tls import SecuritySettings
from services.scheduler.core.admission import AdmissionRules
from services.scheduler.core.autoscaling import ScalingBounds, ScalingPolicy
from services.scheduler.core.settings import CoreSettings, DispatchRules

log = logging.getLogger(__name__)
SECTIONS = {"admission": AdmissionRules, "dispatch": DispatchRules, "autoscaling": ScalingPolicy}
# flat keys of earlier releases whose name changed in their section (the others kept it)
RENAMED = {"autoscaling": "enabled", "scaling_warmup_s": "warmup_s"}


@dataclass(frozen=True)
class SchedulerConfig(SecuritySettings):
    listen: str = "127.0.0.1:50052"
    metrics_listen: str = "127.0.0.1:9092"  # Prometheus /metrics; empty: off
    fairness_window_s: float = 60.0  # Jain's index covers tokens served this long ago
    heartbeat_interval_ms: int = 1000
    heartbeat_misses: int = 3  # a worker silent this many intervals is suspect (no new lease)
    # a worker whose report did not change may let this many intervals pass without a
    # heartbeat while this scheduler's pings keep its session's transport watched
    quiet_heartbeats: int = 4
    max_resumes: int = 3  # for Schedule (deprecated); routers have their own max_resumes
    pool: str = ""  # this scheduler serves the [[models]] of this pool ("": the default one)
    # Ed25519 key leases are signed with (python -m services.common.lease_token new FILE);
    # empty: a key drawn at each start (workers keep their last keys across restarts)
    lease_signing_key_file: str = ""
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    log_format: str = "json"  # json (one object per line) or text
    admission: AdmissionRules = field(default_factory=AdmissionRules)
    dispatch: DispatchRules = field(default_factory=DispatchRules)
    autoscaling: ScalingPolicy = field(default_factory=ScalingPolicy)
    catalog: dict[str, ModelSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.require_secret("scheduler", self.listen)
        require(self.heartbeat_interval_ms >= 50, "scheduler.heartbeat_interval_ms must be >= 50")
        require(self.heartbeat_misses >= 1, "scheduler.heartbeat_misses must be >= 1")
        require(self.quiet_heartbeats >= 0, "scheduler.quiet_heartbeats must be >= 0")
        require(self.max_resumes >= 0, "scheduler.max_resumes must be >= 0")
        if self.lease_signing_key_file:
            self.lease_signer()  # a key file that does not load stops the start here
        for model_id, fallback in self.admission.fallbacks.items():
            require(
                model_id in self.catalog and fallback in self.catalog,
                f"scheduler.admission.fallbacks: {model_id!r} → {fallback!r} must name [[models]]",
            )

    def lease_signer(self) -> LeaseSigner:
        if not self.lease_signing_key_file:
            return LeaseSigner.generate()
        try:
            return LeaseSigner.from_file(self.lease_signing_key_file)
        except LeaseKeyError as exc:
            raise ConfigError(f"scheduler.lease_signing_key_file: {exc}") from None

    def core_settings(self) -> CoreSettings:
        """The core's settings, with each model's worker bounds from its catalog entry."""
        bounds = {
            m: ScalingBounds(spec.min_workers, spec.max_workers) for m, spec in self.catalog.items()
        }
        return CoreSettings(
            heartbeat_s=self.heartbeat_interval_ms / 1000.0,
            heartbeat_misses=self.heartbeat_misses,
            quiet_heartbeats=self.quiet_heartbeats,
            admission=self.admission,
            dispatch=self.dispatch,
            autoscaling=replace(self.autoscaling, bounds=bounds),
        )


def load(
    data: Mapping[str, Any], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> SchedulerConfig:
    section = nest_flat_keys(data.get("scheduler", {}))
    catalog = pool_catalog(data, section, env, "SCHEDULER", overrides)
    return load_section(SchedulerConfig, section, env, "SCHEDULER", overrides, catalog=catalog)


def nest_flat_keys(section: Mapping[str, Any], warn: bool = True) -> dict[str, Any]:
    """Moves the flat keys of earlier releases into their nested sections, warning once per
    key (unless `warn` is false). A key given both ways is an error."""
    moved = {name: {} for name in SECTIONS}
    out: dict[str, Any] = {}
    for key, value in section.items():
        home = _home_of(key, value)
        if home is None:
            out[key] = value
            continue
        new_key = RENAMED.get(key, key)
        if warn:
            log.warning(
                "config: [scheduler] %s is deprecated; use [scheduler.%s] %s", key, home, new_key
            )
        moved[home][new_key] = value
    for name, values in moved.items():
        nested = out.get(name, {})
        if not isinstance(nested, Mapping):
            raise ConfigError(f"[scheduler.{name}] must be a table, got {nested!r}")
        clash = set(nested) & set(values)
        if clash:
            raise ConfigError(f"[scheduler.{name}] {', '.join(sorted(clash))} given twice")
        if values or nested:
            out[name] = dict(nested) | values
    return out


def with_overrides(config: SchedulerConfig, **overrides: Any) -> SchedulerConfig:
    """`config` with keys replaced, flat (`recovery_s=0`) or by section: for tests and
    benchmarks that set a few keys."""
    nested = nest_flat_keys(overrides, warn=False)
    for name in SECTIONS:
        if isinstance(nested.get(name), Mapping):
            nested[name] = replace(getattr(config, name), **nested[name])
    return replace(config, **nested)


def _home_of(key: str, value: Any) -> str | None:
    """The nested section a flat key of earlier releases belongs to, or None."""
    if key in SECTIONS and isinstance(value, Mapping):
        return None  # the section itself
    name = RENAMED.get(key, key)
    for section, cls in SECTIONS.items():
        if name in {f.name for f in fields(cls) if f.metadata.get("config", True)}:
            return section
    return None
