"""A system of real processes serving one simulated model, for scheduler tests and benches.

    cluster = sim_cluster(tmp_dir, workers=4, slots=8, step_ms=20.0)
    cluster.start(); ...; cluster.procs["worker-0"].kill()  # kill -9 one worker

Scheduler, router and each worker are their own processes (`bench.local_system`), reading a
config that holds only the simulated model, so they start in seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.local_system import LocalSystem

MODEL_ID = "sim-llama"


def tenant_key(i: int) -> str:
    return f"bench-key-{i}"


def _tenants(count: int) -> str:
    return "".join(
        f"""
[[router.tenants]]
id = "tenant-{i}"
api_key_sha256 = "{hashlib.sha256(tenant_key(i).encode()).hexdigest()}"
"""
        for i in range(count)
    )


def sim_config(
    slots: int,
    step_ms: float,
    flush_ms: float,
    scheduler: str = "",
    tenants: int = 0,
    queue_capacity: int = 4096,
    model: str = "",
) -> str:
    return f"""
[router]
max_deadline_s = 600.0
allow_anonymous = true  # loopback only; lets wait_ready list the models
{_tenants(tenants)}
[scheduler]
heartbeat_interval_ms = 500
[scheduler.admission]
queue_capacity = {queue_capacity}
{scheduler}
[worker]
flush_interval_ms = {flush_ms}
[actuator]
cpu_slots = 8  # simulated workers are light
poll_interval_s = 0.5
[[models]]
id = "{MODEL_ID}"
engine = "simulated"
max_context_tokens = 4096
max_output_tokens = 1024
default_max_tokens = 32
max_slots = {slots}
{model}
[models.simulation]
gpu_type = "sim"
memory_bytes = 1073741824
[models.simulation.profiles.sim]
prefill_tokens_per_s = 100000.0
decode_ms_per_step = {step_ms}
batch_slowdown = 0.0
kv_capacity_tokens = 10000000
"""


def sim_cluster(
    log_dir: Path,
    workers: int,
    slots: int = 8,
    step_ms: float = 20.0,
    flush_ms: float = 0.0,
    scheduler: str = "",
    tenants: int = 0,
    queue_capacity: int = 4096,
    model: str = "",
    actuator: bool = False,
    env: dict[str, str] | None = None,
    root: Path | None = None,
) -> LocalSystem:
    """A LocalSystem (not started) whose config serves only the simulated model.
    `scheduler`: extra TOML sections of the scheduler (`[scheduler.autoscaling]` ...);
    `tenants`: that many tenants of equal weight, keys `tenant_key(i)`; `model`: extra
    lines for the model's entry (e.g. min_workers); `actuator`: workers come from the local
    actuator; `env`: more environment for every process; `root`: run the services of
    another checkout."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config = log_dir / "sim-config.toml"
    config.write_text(
        sim_config(slots, step_ms, flush_ms, scheduler, tenants, queue_capacity, model)
    )
    return LocalSystem(
        log_dir,
        workers=workers,
        env={"INFERENCE_CONFIG": str(config), **(env or {})},
        actuator=actuator,
        **({"root": root} if root is not None else {}),
    )
