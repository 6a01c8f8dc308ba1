"""python -m services.actuator --config deploy/local/config.toml

Starts and drains worker processes on this machine so that each model has the workers the
scheduler's autoscaling policy wants. Ctrl-C (SIGINT/SIGTERM) drains every worker, then exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from inference.v1 import scheduler_pb2_grpc, types_pb2

from services.actuator.actuator import Actuator
from services.actuator.config import ActuatorConfig, load
from services.actuator.devices import devices_from
from services.actuator.processes import Launcher
from services.common.cli import base_parser, run_service
from services.common.internal_auth import internal_channel
from services.common.server import CHANNEL_OPTIONS

log = logging.getLogger("services.actuator")


class SchedulerStatus:
    """Reads GetStatus from the scheduler (the StatusSource of the actuator)."""

    def __init__(self, config: ActuatorConfig) -> None:
        channel = internal_channel(
            config.scheduler_address,
            config.internal_secret,
            CHANNEL_OPTIONS,
            config.tls(),
            peer_role="scheduler",
        )
        self._stub = scheduler_pb2_grpc.SchedulerStub(channel)

    async def status(self) -> types_pb2.GetStatusResponse:
        return await self._stub.GetStatus(types_pb2.GetStatusRequest(), timeout=5)


def _parser():
    parser = base_parser("Local actuator: worker processes follow the desired counts")
    parser.add_argument("--scheduler", dest="scheduler_address", help="scheduler host:port")
    parser.add_argument("--gpus", help="auto, none, or GPU indices such as 0,1")
    parser.add_argument("--cpu-slots", type=int, help="workers on the CPU at once")
    return parser


async def main(config: ActuatorConfig) -> None:
    config_path = _parser().parse_known_args()[0].config
    actuator = Actuator(
        config,
        devices_from(config.gpus, config.cpu_slot_count, config.cpu_fallback, config.cpu_per_model),
        SchedulerStatus(config),
        Launcher(
            config_path,
            config.scheduler_address,
            Path(config.log_dir),
            config.stop_timeout_s,
            cpu_threads=config.cpu_threads_per_worker,
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("following the scheduler at %s", config.scheduler_address)
    await actuator.run(stop)
    log.info("every worker stopped")


if __name__ == "__main__":
    run_service("actuator", _parser(), load, main)
