"""The system the chaos bench runs, as a user starts it: `make up` (scripts/up.sh) with two
routers, the local actuator keeping two workers of each model, and three tenants (one with a
limit its traffic goes over); and where each process is, to kill it.

Every process runs under scripts/supervise.py, which starts again whatever dies; the actuator
replaces its workers. Nothing here restarts anything: what comes back, the system brought back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import tomli_w

from bench.local_system import ROOT, consecutive_free_ports, free_port, start_make_up
from services.common.config import read_toml

MODELS = ("smollm2-135m", "minilm-l6-v2", "llama-3-70b")
WORKERS_PER_MODEL = 2
TENANT_KEYS = {"alpha": "chaos-key-alpha", "beta": "chaos-key-beta", "greedy": "chaos-key-greedy"}
GREEDY_LIMITS = {"requests_per_s": 0.5, "burst_requests": 1}  # its traffic goes over this
KINDS = ("scheduler", "router", "worker", "actuator")


def chaos_config(out: Path) -> None:
    """deploy/local/config.toml with two workers of each model and the tenants."""
    data = read_toml(ROOT / "deploy" / "local" / "config.toml")
    data["models"] = [m for m in data["models"] if m["id"] in MODELS]
    for model in data["models"]:
        model["min_workers"] = model["max_workers"] = WORKERS_PER_MODEL
    actuator = data["actuator"]
    actuator["cpu_slots"] = WORKERS_PER_MODEL * len(MODELS)
    actuator["cpu_workers_per_model"] = WORKERS_PER_MODEL  # two real ones on the CPU too,
    actuator["cpu_threads_per_worker"] = 1  # each on one thread
    tenants = []
    for name, key in TENANT_KEYS.items():
        tenant = {"id": name, "api_key_sha256": hashlib.sha256(key.encode()).hexdigest()}
        tenants.append(tenant | (GREEDY_LIMITS if name == "greedy" else {}))
    data["router"]["tenants"] = tenants
    out.write_bytes(tomli_w.dumps(data).encode())


@dataclass
class ChaosSystem:
    run_dir: Path
    routers: list[str] = field(default_factory=list)
    http: list[str] = field(default_factory=list)
    scheduler_metrics: str = ""
    scheduler_port: int = 0
    up: subprocess.Popen | None = None

    def start(self, ready_timeout_s: float = 600) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "chaos.toml"
        chaos_config(config)
        base, http_base, metrics_base = (consecutive_free_ports(2) for _ in range(3))
        self.scheduler_port = free_port()
        scheduler = f"127.0.0.1:{self.scheduler_port}"
        self.routers = [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
        self.http = [f"127.0.0.1:{http_base}", f"127.0.0.1:{http_base + 1}"]
        self.scheduler_metrics = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "CONFIG": str(config),
            "RUN_DIR": str(self.run_dir),
            "ROUTERS": "2",
            "ROUTER_LISTEN": self.routers[0],
            "ROUTER_HTTP_LISTEN": self.http[0],
            "ROUTER_METRICS_LISTEN": f"127.0.0.1:{metrics_base}",
            "ROUTERS_BASE_PORT": str(base),
            "ROUTERS_HTTP_BASE_PORT": str(http_base),
            "ROUTERS_METRICS_BASE_PORT": str(metrics_base),
            "ROUTER_SCHEDULER_ADDRESS": scheduler,
            "SCHEDULER_LISTEN": scheduler,
            "SCHEDULER_METRICS_LISTEN": self.scheduler_metrics,
            "ACTUATOR_SCHEDULER_ADDRESS": scheduler,
            "WORKER_SCHEDULER_ADDRESS": scheduler,
            "ACTUATOR_WORKER_BASE_PORT": "0",
            "ACTUATOR_METRICS_BASE_PORT": "0",
        }
        self.up = start_make_up(env, self.run_dir / "up.log")
        self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while "services ready" not in (self.run_dir / "up.log").read_text():
            if self.up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"make up did not start:\n{self.logs()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; then whatever is left is killed."""
        if self.up is None:
            return
        os.killpg(self.up.pid, signal.SIGINT)
        try:
            self.up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.up.pid, signal.SIGKILL)
            self.up.wait()

    def leftovers(self, wait_s: float = 30.0) -> list[str]:
        """Processes of this run still alive after it stopped (waiting up to `wait_s` for
        draining ones), then killed: what a killed parent left behind."""
        deadline, marker = time.monotonic() + wait_s, str(self.run_dir)
        while True:
            left = [
                p
                for p in psutil.process_iter(["cmdline"])
                if marker in " ".join(p.info["cmdline"] or ())
            ]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        return [" ".join(p.info["cmdline"])[:200] for p in left]

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.run_dir.glob("*.log"))
        )

    # -- the processes ----------------------------------------------------------------------
    def _pid_file(self, name: str) -> int | None:
        try:
            pid = int((self.run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def processes(self) -> dict[str, int]:
        """Each long-lived process now: name → pid (workers by their worker id)."""
        found = {}
        for name in ("scheduler", "actuator", "router", "router-1"):
            pid = self._pid_file(name)
            if pid is not None:
                found[name] = pid
        actuator = found.get("actuator")
        if actuator is not None:
            for child in _children(actuator):
                worker_id = _worker_id(child)
                if worker_id:
                    found[worker_id] = child.pid
        return found

    def victims(self, kind: str) -> list[tuple[str, int]]:
        """The processes of a kind that a kill may hit."""
        named = self.processes().items()
        if kind == "router":
            return [(n, p) for n, p in named if n.startswith("router")]
        if kind == "worker":
            return [
                (n, p)
                for n, p in named
                if n not in ("scheduler", "actuator") and not n.startswith("router")
            ]
        return [(n, p) for n, p in named if n == kind]


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.Error:
        return []


def _worker_id(process: psutil.Process) -> str:
    """The id the actuator gave a worker process ("" for any other process)."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return ""
    if "services.gpu_worker" not in cmdline or "--worker-id" not in cmdline:
        return ""
    return cmdline[cmdline.index("--worker-id") + 1]


def rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0
