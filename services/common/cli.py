"""Shared command-line handling of the three services' `__main__` modules."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.common.config import ConfigError, read_toml
from services.common.logs import configure_logging
from services.common.server import install_uvloop
from services.common.tracing import setup_tracing, shutdown_tracing

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "local" / "config.toml"
# Set by a supervising process (the local actuator, `make up`) to its pid: the service stops
# (SIGTERM: it drains) when that process dies, rather than live on unsupervised.
PARENT_PID_ENV = "INFERENCE_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """Asks Linux for SIGTERM when the supervising parent dies (no-op elsewhere)."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config",
        default=os.environ.get("INFERENCE_CONFIG", str(DEFAULT_CONFIG)),
        help="TOML config file (default: deploy/local/config.toml or $INFERENCE_CONFIG)",
    )
    parser.add_argument("--listen", help="host:port to serve on (overrides the config)")
    parser.add_argument("--metrics-listen", help="host:port of the Prometheus /metrics endpoint")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    return parser


def run_service(
    name: str,
    parser: argparse.ArgumentParser,
    load: Callable[[dict[str, Any], os._Environ, dict[str, Any]], Any],
    main: Callable[[Any], Awaitable[None]],
) -> None:
    """Parses flags, loads and validates the config, sets up tracing (OTLP export when
    OTEL_EXPORTER_OTLP_ENDPOINT is set), runs `main(config)` on uvloop."""
    args = parser.parse_args()
    stop_with_parent()
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    overrides["internal_secret"] = os.environ.get("INFERENCE_INTERNAL_SECRET")
    try:
        config = load(read_toml(args.config), os.environ, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(name, config.log_level, config.log_format)
    setup_tracing(name, os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    install_uvloop()
    try:
        asyncio.run(main(config))
    finally:
        shutdown_tracing()
