"""Shared test factories: a clock the test moves by hand, and scheduler cores and tickets
built with the settings a test names (vLLM's create_scheduler / create_requests)."""

from __future__ import annotations

from dataclasses import replace

from services.scheduler.config import SECTIONS, nest_flat_keys
from services.scheduler.core.scheduler import SchedulerCore
from services.scheduler.core.settings import CoreSettings
from services.scheduler.core.types import ModelCatalogEntry, Priority, Ticket


class Clock:
    """An injected clock: `now` seconds, moved by assigning or adding to it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(model_id: str = "m", **fields) -> ModelCatalogEntry:
    """A generative model: 2048 tokens of context, 512 out at most, 64 by default."""
    return ModelCatalogEntry(model_id, False, 2048, 512, 64, **fields)


def core_settings(**keys) -> CoreSettings:
    """CoreSettings with a 1 s heartbeat (3 missed: dead), no recovery window and no
    scaling warm-up (a test starts from nothing), and `keys` set in whichever section owns
    them (`queue_capacity=8`, `preemption=False`, `scale_up_cooldown_s=1`, ...)."""
    keys = {"recovery_s": 0.0, "warmup_s": 0.0} | keys
    heartbeat = {
        k: keys.pop(k) for k in ("heartbeat_s", "heartbeat_misses", "quiet_heartbeats") if k in keys
    }
    nested = nest_flat_keys(keys, warn=False)
    unknown = set(nested) - set(SECTIONS)
    assert not unknown, f"no section has {unknown}"
    sections = {name: replace(SECTIONS[name](), **nested.get(name, {})) for name in SECTIONS}
    return CoreSettings(
        **({"heartbeat_s": 1.0, "heartbeat_misses": 3, "quiet_heartbeats": 0} | heartbeat),
        **sections,
    )


def make_core(
    catalog: dict[str, ModelCatalogEntry] | None = None, clock: Clock | None = None, **keys
) -> tuple[SchedulerCore, Clock]:
    clock = clock if clock is not None else Clock()
    catalog = catalog if catalog is not None else {"m": entry("m")}
    return SchedulerCore(catalog, clock, core_settings(**keys)), clock


def ticket(
    request_id: str,
    model_id: str = "m",
    priority: Priority = Priority.MEDIUM,
    tenant_id: str = "t",
    **fields,
) -> Ticket:
    return Ticket(request_id, model_id, priority, tenant_id, **fields)
