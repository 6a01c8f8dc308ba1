"""Starts scheduler, workers and router as processes on free loopback ports.

Used by the benchmarks and the integration tests, the way `make up` runs the system.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# a worker's interpreter and extra environment, by its index (e.g. another engine's venv)
WorkerLaunch = Callable[[int], tuple[str, dict[str, str]]]


def free_port() -> int:
    """A free port below the kernel's ephemeral range: one picked now and bound later by a
    process cannot be handed meanwhile to an outgoing connection (port 0 draws from that
    range, and did collide)."""
    low = _ephemeral_start()
    while True:
        port = random.randrange(10_000, max(low, 20_000))
        if port_is_free(port):
            return port


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def consecutive_free_ports(count: int) -> int:
    """The first of `count` free consecutive ports."""
    while True:
        base = free_port()
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue


def with_own_protos(root: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` for a process of the checkout at `root`: its own generated protobuf code first
    (the venv's path names this checkout's; a baseline's scheduler must not serve this one's
    newer methods as its own)."""
    paths = [str(root / "gen"), *filter(None, [env.get("PYTHONPATH", "")])]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def start_make_up(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """scripts/up.sh (what `make up` runs) in its own process group, its output to
    `log_path`."""
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            ["scripts/up.sh"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class LocalSystem:
    """`workers` worker processes started directly; or, with `actuator`, none: the local
    actuator starts and drains them as the scheduler's autoscaling policy wants."""

    def __init__(
        self,
        log_dir: Path,
        workers: int = 1,
        env: dict[str, str] | None = None,
        actuator: bool = False,
        root: Path = ROOT,
        worker_launch: WorkerLaunch | None = None,
        routers: int = 1,
    ):
        self.log_dir = log_dir
        self.root = root  # the checkout whose services run (another one: a baseline)
        self.ports = {"router": free_port(), "scheduler": free_port()}
        self.worker_ports = [free_port() for _ in range(workers)]
        self.http_port = free_port()
        self.metrics_ports = {
            "router": free_port(),
            "scheduler": free_port(),
            **{f"worker-{i}": free_port() for i in range(workers)},
        }
        self.extra_routers = [(free_port(), free_port(), free_port()) for _ in range(routers - 1)]
        self.procs: dict[str, subprocess.Popen] = {}
        self._commands: dict[str, tuple[list[str], dict[str, str], str]] = {}
        self._extra_env = env or {}
        self.actuator = actuator
        self._worker_launch = worker_launch

    @property
    def router_address(self) -> str:
        return f"127.0.0.1:{self.ports['router']}"

    @property
    def router_addresses(self) -> list[str]:
        """Every router: `router`, then `router-1`, `router-2`..."""
        return [self.router_address] + [f"127.0.0.1:{p}" for p, _, _ in self.extra_routers]

    @property
    def scheduler_address(self) -> str:
        return f"127.0.0.1:{self.ports['scheduler']}"

    @property
    def worker_addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.worker_ports]

    def start(
        self, ready_timeout_s: float = 300, models: str | None = None, deferred: tuple = ()
    ) -> None:
        """Starts every process and waits until the router serves and `models` (comma-
        separated; default every model, "" none) are ready. Workers whose index is in
        `deferred` are not started: `restart("worker-N")` starts them later."""
        scheduler = f"127.0.0.1:{self.ports['scheduler']}"
        env = {
            **with_own_protos(self.root, dict(os.environ)),
            "ROUTER_LISTEN": self.router_address,
            "ROUTER_SCHEDULER_ADDRESS": scheduler,
            "ROUTER_METRICS_LISTEN": f"127.0.0.1:{self.metrics_ports['router']}",
            "ROUTER_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "SCHEDULER_LISTEN": scheduler,
            "SCHEDULER_METRICS_LISTEN": f"127.0.0.1:{self.metrics_ports['scheduler']}",
            "WORKER_SCHEDULER_ADDRESS": scheduler,
            "WORKER_CACHE_DIR": str(ROOT / ".cache" / "models"),
            "ACTUATOR_SCHEDULER_ADDRESS": scheduler,
            "ACTUATOR_WORKER_BASE_PORT": "0",  # any free port
            "ACTUATOR_METRICS_BASE_PORT": "0",
            "ACTUATOR_LOG_DIR": str(self.log_dir),
            **self._extra_env,
        }
        env.setdefault("SCHEDULER_AUTOSCALING_ENABLED", "true" if self.actuator else "false")
        self._spawn("scheduler", ["services.scheduler"], env)
        if self.actuator:
            self._spawn("actuator", ["services.actuator"], env)
        for i, address in enumerate(self.worker_addresses):
            metrics = f"127.0.0.1:{self.metrics_ports[f'worker-{i}']}"
            args = ["services.gpu_worker", "--listen", address, "--metrics-listen", metrics]
            python, extra_env = self._worker_launch(i) if self._worker_launch else (PYTHON, {})
            name, worker_env = f"worker-{i}", {**env, **extra_env}
            self._commands[name] = (args, worker_env, python)
            if i not in deferred:
                self._spawn(name, args, worker_env, python=python)
        self._spawn_routers(env)
        self._wait_ready(ready_timeout_s, models)

    def _spawn_routers(self, env: dict[str, str]) -> None:
        env["ROUTER_REPLICAS"] = str(1 + len(self.extra_routers))
        self._spawn("router", ["services.router"], env)
        for i, (grpc_port, http_port, metrics_port) in enumerate(self.extra_routers, 1):
            router_env = {
                **env,
                "ROUTER_LISTEN": f"127.0.0.1:{grpc_port}",
                "ROUTER_HTTP_LISTEN": f"127.0.0.1:{http_port}",
                "ROUTER_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            }
            self._spawn(f"router-{i}", ["services.router"], router_env)

    def _wait_ready(self, ready_timeout_s: float, models: str | None) -> None:
        ready = subprocess.run(
            [
                sys.executable,
                "scripts/wait_ready.py",
                "--address",
                self.router_address,
                "--timeout",
                str(ready_timeout_s),
                *([] if models is None else ["--models", models]),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if ready.returncode != 0:
            self.kill()
            raise RuntimeError(f"system not ready:\n{ready.stdout}{ready.stderr}\n{self.logs()}")

    def stop(self, timeout_s: float = 30) -> dict[str, int]:
        """SIGTERM to every process; returns their exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = -9
        return codes

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log"))
        )

    def restart(self, name: str) -> None:
        """Starts a process that exited (or was killed) again, as it was started; a worker
        whose port something else took meanwhile (an outgoing connection's ephemeral port:
        the kernel hands those out from the range `free_port` draws from) on a new port."""
        args, env, python = self._commands[name]
        if name.startswith("worker-"):
            args = self._free_worker_ports(name, args)
        self._spawn(name, args, env, mode="a", python=python)

    def _free_worker_ports(self, name: str, args: list[str]) -> list[str]:
        """The worker's arguments, with a new port for each of its ports taken meanwhile."""
        index = int(name.removeprefix("worker-"))
        args = list(args)
        for flag in ("--listen", "--metrics-listen"):
            if flag not in args:
                continue
            at = args.index(flag) + 1
            if port_is_free(int(args[at].rpartition(":")[2])):
                continue
            port = free_port()
            args[at] = f"127.0.0.1:{port}"
            if flag == "--listen":
                self.worker_ports[index] = port
            else:
                self.metrics_ports[name] = port
        return args

    def _spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        mode: str = "w",
        python: str = PYTHON,
    ) -> None:
        self._commands[name] = (args, env, python)
        out = open(self.log_dir / f"{name}.log", mode)  # noqa: SIM115 - lives as long as the process
        self.procs[name] = subprocess.Popen(
            [python, "-m", *args],
            cwd=self.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
