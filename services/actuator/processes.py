"""Worker processes started by the local actuator: launch, log forwarding, drain and stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.actuator.plan import WorkerProcess
from services.common.cli import PARENT_PID_ENV
from services.common.output_relay import relay_output

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LaunchSpec:
    """Where a new worker listens and what it serves."""

    worker_id: str
    model_id: str
    device: str  # "gpu-N" or "cpu"
    index: int  # the actuator's port slot: ports are base + index
    listen: str  # host:port (port 0: any free one)
    metrics_listen: str  # host:port, or "" for none
    python: str = sys.executable  # the interpreter (engine_python.worker_python)


@dataclass
class ManagedWorker:
    spec: LaunchSpec
    process: asyncio.subprocess.Process
    started_at: float
    log_path: Path
    stop_requested_at: float | None = None
    _pump: asyncio.Task | None = field(default=None, repr=False)

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    def view(self, active_leases: int) -> WorkerProcess:
        return WorkerProcess(
            self.spec.worker_id,
            self.spec.model_id,
            self.spec.device,
            self.started_at,
            stopping=self.stop_requested_at is not None,
            active_leases=active_leases,
        )

    def drain(self) -> None:
        """SIGTERM: the worker reports draining, finishes its streams, then exits."""
        if self.stop_requested_at is None and not self.exited:
            self.stop_requested_at = time.monotonic()
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if not self.exited:
            self.process.kill()


class Launcher:
    """Starts `python -m services.gpu_worker` processes reading the actuator's config file.
    Each worker's output goes to `<log_dir>/<worker_id>.log` and, prefixed, to stdout."""

    def __init__(
        self,
        config_path: str,
        scheduler_address: str,
        log_dir: Path,
        shutdown_grace_s: float,
        echo: bool = True,
        cpu_threads: int = 0,  # threads of a CPU worker's model; 0: torch's default
    ) -> None:
        self.cpu_threads = cpu_threads
        self.config_path = config_path
        self.scheduler_address = scheduler_address
        self.log_dir = log_dir
        self.shutdown_grace_s = shutdown_grace_s
        self.echo = echo

    async def start(self, spec: LaunchSpec) -> ManagedWorker:
        args, env = self._command_line(spec)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        worker = ManagedWorker(
            spec, process, time.monotonic(), self.log_dir / f"{spec.worker_id}.log"
        )
        worker._pump = asyncio.create_task(self._pump_output(worker))
        log.info(
            "started worker %s for %s on %s (pid %d)",
            spec.worker_id,
            spec.model_id,
            spec.device,
            process.pid,
        )
        return worker

    def _command_line(self, spec: LaunchSpec) -> tuple[list[str], dict[str, str]]:
        """The worker's command line and environment."""
        args = [spec.python, "-u", "-m", "services.gpu_worker", "--config", self.config_path]
        args += ["--scheduler", self.scheduler_address, "--listen", spec.listen]
        args += ["--metrics-listen", spec.metrics_listen, "--models", spec.model_id]
        args += ["--worker-id", spec.worker_id]
        env = {
            **os.environ,
            PARENT_PID_ENV: str(os.getpid()),  # an actuator that dies takes its workers along
            "WORKER_LOAD_ON_COMMAND": "false",  # it serves the model it was started for
            "WORKER_SHUTDOWN_GRACE_S": str(self.shutdown_grace_s),
        }
        if spec.device.startswith("gpu-"):
            args += ["--gpu-index", spec.device.removeprefix("gpu-")]
        else:
            args += ["--device", "cpu"]
            env["CUDA_VISIBLE_DEVICES"] = ""
            if self.cpu_threads:
                env["WORKER_TORCH_THREADS"] = str(self.cpu_threads)
        return args, env

    async def _pump_output(self, worker: ManagedWorker) -> None:
        stream = worker.process.stdout
        assert stream is not None
        prefix = f"[{worker.spec.worker_id}] ".encode()
        # small appends to a local file, as the services' own logging does
        with open(worker.log_path, "ab") as out:  # noqa: ASYNC230
            await relay_output(stream, out, prefix, self.echo)
