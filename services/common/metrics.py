"""Prometheus metrics endpoints. Each service keeps its metrics in a registry of its own."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)
REFRESH_WAIT_S = 1.0  # a scrape waits this long for the loop to refresh, then takes what is

# Latency buckets in seconds: 5 ms to 2 minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
INTER_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
UNKNOWN = "_unknown"  # label value for names that are not configured (bounded cardinality)


class RefreshedRegistry(CollectorRegistry):
    """A registry whose state-mirroring gauges are brought up to date when it is collected (a
    scrape), not on a timer: nobody scraping costs nothing. `refresh` reads state the event
    loop owns, so it runs there (`bind`); a scrape from the metrics thread waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refresh: Callable[[], None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop, refresh: Callable[[], None]) -> None:
        self._loop, self._refresh = loop, refresh

    def collect(self):
        self._refresh_now()
        yield from super().collect()

    def _refresh_now(self) -> None:
        loop, refresh = self._loop, self._refresh
        if loop is None or refresh is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # read on the loop itself (a test, a status call)
            refresh()
            return
        done = threading.Event()

        def run() -> None:
            try:
                refresh()
            except Exception:
                log.exception("refreshing the metrics failed; serving the last values")
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: the last values
            return
        done.wait(REFRESH_WAIT_S)


class MetricsEndpoint:
    """/metrics on `listen` ("host:port"; port 0 picks one; empty: metrics off)."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self._registry = registry
        self._listen = listen
        self._server = None
        self.port = 0

    def start(self) -> int:
        if self._listen and self._server is None:
            host, _, port = self._listen.rpartition(":")
            self._server, _ = start_http_server(
                int(port), addr=host.strip("[]") or "127.0.0.1", registry=self._registry
            )
            self.port = self._server.server_port
        return self.port

    def stop(self) -> None:
        """Closes the endpoint without blocking the caller (shutdown waits out a poll)."""
        server, self._server = self._server, None
        if server is not None:
            threading.Thread(target=_close, args=(server,), daemon=True).start()


def _close(server) -> None:
    server.shutdown()
    server.server_close()
