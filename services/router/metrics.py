"""The router's Prometheus metrics: requests by final status, latency to the first token,
inter-token latency, tokens generated, rate-limited requests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.metrics import INTER_TOKEN_BUCKETS, LATENCY_BUCKETS


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inference_router_requests",
            "Requests by RPC, model and final gRPC status code",
            ["rpc", "model", "code"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "inference_router_time_to_first_token_seconds",
            "From the request's arrival at the router to its first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "inference_router_inter_token_latency_seconds",
            "Time between tokens of a stream, per token",
            ["model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "inference_router_generated_tokens", "Tokens streamed to clients", ["model"], registry=r
        )
        self.cache_hits = Counter(
            "inference_router_cache_hits", "Requests answered from the response cache", registry=r
        )
        self.cache_misses = Counter(
            "inference_router_cache_misses",
            "Cacheable requests the response cache did not have",
            registry=r,
        )
        self.rate_limited = Counter(
            "inference_router_rate_limited",
            "Requests refused by a tenant's rate limit",
            ["tenant"],
            registry=r,
        )


class StreamObserver:
    """Times one generation stream as the router relays it."""

    def __init__(self, metrics: RouterMetrics, model: str) -> None:
        self._first_token = metrics.time_to_first_token.labels(model)
        self._inter_token = metrics.inter_token_latency.labels(model)
        self._tokens = metrics.tokens.labels(model)
        self._started = time.monotonic()
        self._last = 0.0

    def delta(self, tokens: int) -> None:
        if not tokens:
            return
        now = time.monotonic()
        if not self._last:
            self._first_token.observe(now - self._started)
        else:
            gap = (now - self._last) / tokens
            for _ in range(tokens):
                self._inter_token.observe(gap)
        self._last = now
        self._tokens.inc(tokens)
