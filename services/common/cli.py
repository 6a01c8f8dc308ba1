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
