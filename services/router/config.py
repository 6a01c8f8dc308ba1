"""Router configuration: the [router] section and its [[router.tenants]]."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.config import ConfigError, load_section, require


@dataclass(frozen=True)
class TenantSpec:
    tenant_id: str
    api_key_sha256: str  # hex SHA-256 of the API key; the key itself is never stored


@dataclass(frozen=True)
class RouterConfig:
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9091"  # Prometheus /metrics; empty: off
    scheduler_address: str = "127.0.0.1:50052"
    default_deadline_s: float = 120.0  # when the client sets none
    max_deadline_s: float = 600.0  # longer client deadlines are cut to this
    model_refresh_s: float = 2.0  # how long the model list from the scheduler is reused
    max_prompt_chars: int = 32_768
    allow_anonymous: bool = True  # only while listening on loopback
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    log_format: str = "json"  # json (one object per line) or text
    tenants: tuple[TenantSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        require(
            0 < self.default_deadline_s <= self.max_deadline_s,
            "router: need 0 < default_deadline_s <= max_deadline_s",
        )
        require(self.max_prompt_chars > 0, "router.max_prompt_chars must be > 0")
        if self.allow_anonymous and not is_loopback(self.listen):
            raise ConfigError(
                f"router.allow_anonymous is only allowed on a loopback address, not {self.listen}"
            )


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(
    data: Mapping[str, Any], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> RouterConfig:
    section = dict(data.get("router", {}))
    tenants = []
    for raw in section.pop("tenants", []):
        if set(raw) != {"id", "api_key_sha256"}:
            raise ConfigError("[[router.tenants]] entries need exactly id and api_key_sha256")
        tenants.append(TenantSpec(str(raw["id"]), str(raw["api_key_sha256"]).lower()))
    return load_section(RouterConfig, section, env, "ROUTER", overrides, tenants=tuple(tenants))
