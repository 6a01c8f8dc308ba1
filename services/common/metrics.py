"""Prometheus metrics endpoints. Each service keeps its metrics in a registry of its own."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, start_http_server

# Latency buckets in seconds: 5 ms to 2 minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
INTER_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
UNKNOWN = "_unknown"  # label value for names that are not configured (bounded cardinality)


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
