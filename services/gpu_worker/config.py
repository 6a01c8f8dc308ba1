"""Worker configuration: the [worker] section and the shared [[models]] catalog."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.catalog import ModelSpec, parse_catalog
from services.common.config import ConfigError, is_loopback, load_section, require
from services.common.lease_token import LeaseKeyError, parse_public_keys
from services.common.tls import SecuritySettings


@dataclass(frozen=True)
class WorkerConfig(SecuritySettings):
    listen: str = "127.0.0.1:50061"
    metrics_listen: str = "127.0.0.1:9093"  # Prometheus /metrics; empty: off
    gpu_price_per_hour: float = 0.0  # for the cost-per-1k-tokens metric; 0: not reported
    # prices by device: a key found in the device's name ("H100", "A100", "cpu") sets the
    # price for that device; gpu_price_per_hour for any other
    gpu_prices: dict[str, float] = field(default_factory=dict)
    advertise_address: str = ""  # what the scheduler dials; default: listen host + bound port
    scheduler_address: str = "127.0.0.1:50052"
    worker_id: str = ""  # default: <hostname>-<port>
    gpu_index: int = -1  # >= 0 pins the process to that GPU through CUDA_VISIBLE_DEVICES
    models: str = ""  # comma-separated model ids to load; empty: every model in the catalog
    device: str = "auto"  # auto (CUDA when the pinned GPU exists), cpu or cuda
    cache_dir: str = ".cache/models"
    flush_interval_ms: float = 5.0  # tokens produced within this window go out as one message
    torch_threads: int = 0  # 0: torch's default
    memory_budget_bytes: int = 0  # device memory models may take (placement); 0: device total
    load_on_command: bool = True  # offer the catalog to the scheduler's load/unload commands
    shutdown_grace_s: float = 10.0
    # an unhealthy worker (a device fault, an engine thread that died) serves NOT_SERVING,
    # finishes what runs, then exits with EXIT_UNHEALTHY so that its supervisor (make up, the
    # local actuator, Kubernetes) starts a fresh one; false: it stays up, taking no leases
    exit_when_unhealthy: bool = True
    log_level: str = "info"
    log_format: str = "json"  # json (one object per line) or text
    # the scheduler's lease public keys (base64, comma-separated): only leases they signed
    # run here. Empty: the key the scheduler hands over on the session (mTLS or loopback)
    lease_public_keys: str = ""
    catalog: dict[str, ModelSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.require_secret("worker", self.listen, self.advertise_address)
        require(self.device in ("auto", "cpu", "cuda"), "worker.device: auto, cpu or cuda")
        self.pinned_lease_keys()
        trusted = self.lease_public_keys or self.tls_cert_file
        require(
            bool(trusted) or is_loopback(self.scheduler_address),
            f"worker: the scheduler at {self.scheduler_address} is off loopback without mTLS, "
            "so its lease key must be pinned: set worker.lease_public_keys "
            "(WORKER_LEASE_PUBLIC_KEYS) to the scheduler's public key "
            "(python -m services.common.lease_token public FILE)",
        )
        require(self.flush_interval_ms >= 0, "worker.flush_interval_ms must be >= 0")
        for model_id in self.model_ids:
            require(model_id in self.catalog, f"worker.models: {model_id!r} is not in [[models]]")

    def pinned_lease_keys(self) -> list[bytes]:
        try:
            return parse_public_keys(self.lease_public_keys)
        except LeaseKeyError as exc:
            raise ConfigError(f"worker.lease_public_keys: {exc}") from None

    @property
    def model_ids(self) -> list[str]:
        chosen = [m.strip() for m in self.models.split(",") if m.strip()]
        return chosen or list(self.catalog)

    def worker_id_for(self, port: int) -> str:
        return self.worker_id or f"{socket.gethostname()}-{port}"

    def price_per_hour(self, device_name: str, is_cpu: bool) -> float:
        """The device's price: the first `gpu_prices` key in its name (or "cpu" for the
        CPU), else `gpu_price_per_hour`."""
        name = "cpu" if is_cpu else device_name.lower()
        for key, price in self.gpu_prices.items():
            if key.lower() in name:
                return price
        return self.gpu_price_per_hour

    def advertise_for(self, port: int) -> str:
        if self.advertise_address:
            return self.advertise_address
        host = self.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = socket.gethostname()
        return f"{host}:{port}"


def load(
    data: Mapping[str, Any], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> WorkerConfig:
    config = load_section(
        WorkerConfig,
        data.get("worker", {}),
        env,
        "WORKER",
        overrides,
        catalog=parse_catalog(data.get("models", [])),
    )
    if not config.model_ids:
        raise ConfigError("worker: no models to serve ([[models]] is empty)")
    return config
