"""python -m services.scheduler --config deploy/local/config.toml"""

from __future__ import annotations

import logging

from services.common.cli import base_parser, run_service
from services.scheduler import core
from services.scheduler.config import SchedulerConfig, load
from services.scheduler.gc_tuning import tune_collector
from services.scheduler.server import SchedulerServer

log = logging.getLogger("services.scheduler")


async def main(config: SchedulerConfig) -> None:
    server = SchedulerServer(config)
    port = await server.start()
    tune_collector()
    log.info("scheduler serving on %s (port %d), core: %s", config.listen, port, core.BUILD)
    await server.grpc.wait_for_stop_signal()
    log.info("stopping: in-flight requests get %.1fs", config.shutdown_grace_s)
    await server.stop()


if __name__ == "__main__":
    parser = base_parser("Inference scheduler")
    parser.add_argument("--pool", help="the pool whose [[models]] this scheduler serves")
    run_service("scheduler", parser, load, main)
