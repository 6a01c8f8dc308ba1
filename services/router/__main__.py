"""python -m services.router --config deploy/local/config.toml"""

from __future__ import annotations

import logging

from services.common.cli import base_parser, run_service
from services.router.config import RouterConfig, load
from services.router.server import RouterServer

log = logging.getLogger("services.router")


async def main(config: RouterConfig) -> None:
    server = RouterServer(config)
    port = await server.start()
    log.info(
        "router serving on %s (port %d), scheduler at %s",
        config.listen,
        port,
        config.scheduler_address,
    )
    await server.grpc.wait_for_stop_signal()
    log.info("stopping: in-flight requests get %.1fs", config.shutdown_grace_s)
    await server.stop()


def _parser():
    parser = base_parser("Inference router (public entry point)")
    parser.add_argument("--scheduler", dest="scheduler_address", help="scheduler host:port")
    return parser


if __name__ == "__main__":
    run_service("router", _parser(), load, main)
