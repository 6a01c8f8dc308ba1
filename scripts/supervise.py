"""Runs the processes of `make up` and keeps them running.

    supervise.py --log-dir .run --process "scheduler=python -m services.scheduler" ...

Each process's output goes to <log-dir>/<name>.log and, prefixed with [name], to stdout; its
pid to <log-dir>/<name>.pid. A process that exits on its own (a crash, kill -9) is started
again after a backoff (0.5 s, doubling to 10 s; back to 0.5 s once it has run 30 s), and
nothing else is touched: a worker killed under load leaves the scheduler, the router and the
other workers serving. SIGINT or SIGTERM stops everything in reverse order of start (SIGTERM:
services drain), killing what is still up after --stop-timeout seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.common.output_relay import relay_output

FIRST_BACKOFF_S, MAX_BACKOFF_S, STABLE_AFTER_S = 0.5, 10.0, 30.0
PARENT_PID_ENV = "INFERENCE_PARENT_PID"  # services.common.cli: children stop with us


@dataclass
class Supervised:
    name: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    restarts: int = 0
    pump: asyncio.Task | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, processes: list[Supervised], log_dir: Path, stop_timeout_s: float):
        self.processes = processes
        self.log_dir = log_dir
        self.stop_timeout_s = stop_timeout_s
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        keepers = [asyncio.create_task(self._keep(p)) for p in self.processes]
        await self._stopping.wait()
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        await self._stop_all()

    async def _keep(self, proc: Supervised) -> None:
        """Starts the process, and again whenever it exits, with backoff."""
        while True:
            await self._start(proc)
            assert proc.process is not None
            code = await proc.process.wait()
            if proc.pump is not None:
                await proc.pump
            ran = time.monotonic() - proc.started_at
            if ran >= STABLE_AFTER_S:
                proc.backoff_s = FIRST_BACKOFF_S
            say(f"{proc.name} exited with {code}; restarting in {proc.backoff_s:.1f}s")
            await asyncio.sleep(proc.backoff_s)
            proc.backoff_s = min(MAX_BACKOFF_S, proc.backoff_s * 2)
            proc.restarts += 1

    async def _start(self, proc: Supervised) -> None:
        proc.process = await asyncio.create_subprocess_exec(
            *proc.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, PARENT_PID_ENV: str(os.getpid())},
            # its own session: a Ctrl-C reaches the supervisor alone, which stops the
            # processes in order (each still ends with the supervisor: PARENT_PID_ENV)
            start_new_session=True,
        )
        proc.started_at = time.monotonic()
        (self.log_dir / f"{proc.name}.pid").write_text(f"{proc.process.pid}\n")
        proc.pump = asyncio.create_task(self._pump(proc))

    async def _pump(self, proc: Supervised) -> None:
        assert proc.process is not None and proc.process.stdout is not None
        prefix = f"[{proc.name}] ".encode()
        mode = "ab" if proc.restarts else "wb"
        with open(self.log_dir / f"{proc.name}.log", mode) as out:  # noqa: ASYNC230
            await relay_output(proc.process.stdout, out, prefix)

    async def _stop_all(self) -> None:
        """In reverse order of start, one after the other: the router drains its streams
        while workers and scheduler still serve them, then the workers (the actuator drains
        them), then the scheduler. Each gets `stop_timeout_s`, then is killed."""
        say("stopping (SIGTERM, in reverse order; in-flight streams finish)")
        for proc in reversed(self.processes):
            if not _alive(proc):
                continue
            assert proc.process is not None
            proc.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.process.wait(), self.stop_timeout_s)
            except TimeoutError:
                say(f"{proc.name} did not stop within {self.stop_timeout_s:.0f}s; killing it")
                proc.process.kill()
                await proc.process.wait()
        say("stopped")


def _alive(proc: Supervised) -> bool:
    return proc.process is not None and proc.process.returncode is None


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def parse(argv: list[str]) -> tuple[list[Supervised], Path, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-dir", default=".run")
    parser.add_argument("--stop-timeout", type=float, default=20.0)
    parser.add_argument("--process", action="append", default=[], help="name=command line")
    args = parser.parse_args(argv)
    processes = []
    for spec in args.process:
        name, _, command = spec.partition("=")
        if not name or not command:
            parser.error(f"--process wants name=command, got {spec!r}")
        processes.append(Supervised(name, shlex.split(command)))
    return processes, Path(args.log_dir), args.stop_timeout


def main() -> None:
    processes, log_dir, stop_timeout = parse(sys.argv[1:])
    asyncio.run(Supervisor(processes, log_dir, stop_timeout).run())


if __name__ == "__main__":
    main()
