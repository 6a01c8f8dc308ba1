"""Router configuration: the [router] section and its [[router.tenants]]."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.catalog import ModelSpec, parse_catalog
from services.common.config import ConfigError, is_loopback, load_section, require
from services.common.tls import SecuritySettings, TlsFiles
from services.router.ratelimit import Limits

PRIORITY_NAMES = ("high", "medium", "low")
# Keys deploy/ once shipped as examples: a router refuses tenants that still use them.
PLACEHOLDER_KEY_HASHES = frozenset(
    {hashlib.sha256(b"demo-key-change-me").hexdigest(), "replace-with-the-sha256-of-a-key"}
)
LIMIT_KEYS = tuple(Limits.__dataclass_fields__)


@dataclass(frozen=True)
class TenantSpec:
    tenant_id: str
    api_key_sha256: str  # hex SHA-256 of the API key; the key itself is never stored
    weight: float = 1.0  # share of capacity within a priority class (scheduler fairness)
    models: tuple[str, ...] = ()  # models it may use; empty: all
    max_priority: str = "high"  # the highest priority it may ask for
    limits: Limits | None = None  # None: the router's default_limits
    admin: bool = False  # may see the fleet (workers, every tenant's load) in GetStatus

    def __post_init__(self) -> None:
        require(
            self.max_priority in PRIORITY_NAMES,
            f"tenant {self.tenant_id!r}: max_priority must be one of {PRIORITY_NAMES}",
        )
        require(self.weight > 0, f"tenant {self.tenant_id!r}: weight must be > 0")


@dataclass(frozen=True)
class RouterConfig(SecuritySettings):
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9091"  # Prometheus /metrics; empty: off
    http_listen: str = "127.0.0.1:8000"  # JSON and OpenAI-compatible HTTP API; empty: off
    cache_max_entries: int = 0  # response cache for greedy requests, per tenant; 0: off
    cache_ttl_s: float = 300.0
    scheduler_address: str = "127.0.0.1:50052"  # the scheduler of the default pool
    # [router.pools]: the scheduler of each other pool (name = "host:port"); a model goes to
    # the pool its [[models]] entry names
    pools: dict[str, str] = field(default_factory=dict)
    model_pools: dict[str, str] = field(default_factory=dict)  # from [[models]] pool
    models: dict[str, ModelSpec] = field(default_factory=dict)  # the [[models]] catalog
    # where workers leave converted models: the router tokenizes prompts with their tokenizers
    # to name the prompt's KV blocks for kv_aware placement (the workers' [worker] cache_dir)
    model_cache_dir: str = ".cache/models"
    default_deadline_s: float = 120.0  # when the client sets none
    max_deadline_s: float = 600.0  # longer client deadlines are cut to this
    model_refresh_s: float = 2.0  # how long the model list from the scheduler is reused
    status_cache_s: float = 1.0  # how long a GetStatus answer is reused
    max_prompt_chars: int = 32_768
    # the public port: a request message above this is refused (RESOURCE_EXHAUSTED, by gRPC;
    # HTTP 413), at most this many concurrent streams per connection, this much metadata
    max_request_bytes: int = 512 * 1024
    max_streams_per_connection: int = 128
    max_metadata_bytes: int = 16 * 1024
    # TLS at the public door (gRPC and HTTP): a certificate and its key; empty: plaintext.
    # API keys cross the network in these requests: use it wherever the door is not loopback
    public_tls_cert_file: str = ""
    public_tls_key_file: str = ""
    max_resumes: int = 3  # times a request may move (worker lost, preempted) before UNAVAILABLE
    # a request waits this long at most for an unreachable scheduler (restarting) before
    # UNAVAILABLE, within its deadline; about a scheduler restart on Kubernetes
    scheduler_wait_s: float = 30.0
    # requests this router keeps waiting for a lease from one scheduler at once (a tenth kept
    # for high priority); more get RESOURCE_EXHAUSTED with a retry hint. One gRPC server
    # cancels some of its waiting calls past one to two thousand (bench.grpc_waiting_calls):
    # the routers of a pool together should stay under that
    max_waiting_per_scheduler: int = 1000
    allow_anonymous: bool = False  # only while listening on loopback (make up turns it on)
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    log_format: str = "json"  # json (one object per line) or text
    replicas: int = 1  # routers sharing the limits; each enforces 1/replicas of them
    default_limits: Limits = field(default_factory=Limits)  # anonymous and tenants without own
    tenants: tuple[TenantSpec, ...] = field(default_factory=tuple)

    def public_tls(self) -> TlsFiles:
        """The door's certificate and key (no client certificates: callers carry API keys)."""
        return TlsFiles(self.public_tls_cert_file, self.public_tls_key_file)

    def __post_init__(self) -> None:
        self.require_secret("router", self.scheduler_address)
        for spec in self.tenants:
            require(
                spec.api_key_sha256 not in PLACEHOLDER_KEY_HASHES,
                f"tenant {spec.tenant_id!r}: its API key is the shipped placeholder; "
                'give it a key of its own (printf %s "$KEY" | sha256sum)',
            )
        require(
            self.allow_anonymous or bool(self.tenants),
            "router: no tenants and anonymous access off: nobody could call it",
        )
        require(
            0 < self.default_deadline_s <= self.max_deadline_s,
            "router: need 0 < default_deadline_s <= max_deadline_s",
        )
        require(self.max_prompt_chars > 0, "router.max_prompt_chars must be > 0")
        require(self.max_request_bytes >= 1024, "router.max_request_bytes must be >= 1024")
        require(self.max_streams_per_connection >= 1, "router.max_streams_per_connection >= 1")
        require(self.max_metadata_bytes >= 1024, "router.max_metadata_bytes must be >= 1024")
        self.public_tls().check(need_ca=False)
        require(self.replicas >= 1, "router.replicas must be >= 1")
        require(self.max_resumes >= 0, "router.max_resumes must be >= 0")
        require(self.scheduler_wait_s >= 0, "router.scheduler_wait_s must be >= 0")
        require(self.max_waiting_per_scheduler >= 1, "router.max_waiting_per_scheduler >= 1")
        for model_id, pool in self.model_pools.items():
            require(
                not pool or pool in self.pools,
                f"model {model_id!r} is in pool {pool!r}, which [router.pools] does not name",
            )
        public = [a for a in (self.listen, self.http_listen) if a and not is_loopback(a)]
        if self.allow_anonymous and public:
            raise ConfigError(
                f"router.allow_anonymous is only allowed on loopback addresses, not {public[0]}"
            )

    def scheduler_addresses(self) -> dict[str, str]:
        """Each pool's scheduler, the default pool ("") included."""
        return {"": self.scheduler_address, **self.pools}


def load(
    data: Mapping[str, Any], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> RouterConfig:
    section = dict(data.get("router", {}))
    tenants = tuple(_tenant(raw) for raw in section.pop("tenants", []))
    defaults = _limits(section.pop("default_limits", {}), "[router.default_limits]")
    pools = {str(k): str(v) for k, v in section.pop("pools", {}).items()}
    catalog = parse_catalog(data.get("models", []))
    return load_section(
        RouterConfig,
        section,
        env,
        "ROUTER",
        overrides,
        tenants=tenants,
        default_limits=defaults,
        pools=pools,
        model_pools={m: spec.pool for m, spec in catalog.items() if spec.pool},
        models=catalog,
    )


def _tenant(raw: Mapping[str, Any]) -> TenantSpec:
    known = {"id", "api_key_sha256", "weight", "models", "max_priority", "admin", *LIMIT_KEYS}
    where = f"[[router.tenants]] {raw.get('id')!r}"
    if not {"id", "api_key_sha256"} <= set(raw) or set(raw) - known:
        raise ConfigError(f"{where}: needs id and api_key_sha256; may have {sorted(known)}")
    limit_values = {k: raw[k] for k in LIMIT_KEYS if k in raw}
    return TenantSpec(
        tenant_id=str(raw["id"]),
        api_key_sha256=str(raw["api_key_sha256"]).lower(),
        weight=float(raw.get("weight", 1.0)),
        models=tuple(raw.get("models", ())),
        max_priority=str(raw.get("max_priority", "high")),
        admin=bool(raw.get("admin", False)),
        limits=_limits(limit_values, where) if limit_values else None,
    )


def _limits(values: Mapping[str, Any], where: str) -> Limits:
    try:
        limits = Limits(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if any(v < 0 for v in vars(limits).values()):
        raise ConfigError(f"{where}: limits must be >= 0")
    return limits
