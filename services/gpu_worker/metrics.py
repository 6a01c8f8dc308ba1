"""The worker's Prometheus metrics: its device, and per model its sequences, KV cache,
tokens, busy time, load time and cost per thousand tokens."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.gpu_worker.engines.base import Engine
from services.gpu_worker.telemetry import DeviceSample


class WorkerMetrics:
    def __init__(self, gpu_price_per_hour: float) -> None:
        self.registry = r = CollectorRegistry()
        self._price_per_second = gpu_price_per_hour / 3600.0
        self._last_tick = time.monotonic()
        self._busy: dict[str, float] = {}
        self._tokens: dict[str, int] = {}
        device = ["gpu_id"]
        self.utilization = Gauge(
            "inference_worker_gpu_utilization_ratio",
            "Compute utilization of the worker's device, 0 to 1",
            device,
            registry=r,
        )
        self.memory_used = Gauge(
            "inference_worker_gpu_memory_used_bytes", "Device memory in use", device, registry=r
        )
        self.memory_total = Gauge(
            "inference_worker_gpu_memory_total_bytes", "Device memory", device, registry=r
        )
        self.temperature = Gauge(
            "inference_worker_gpu_temperature_celsius",
            "Device temperature (0 where unknown)",
            device,
            registry=r,
        )
        self.power = Gauge(
            "inference_worker_gpu_power_watts",
            "Device power draw (0 where unknown)",
            device,
            registry=r,
        )
        model = ["model"]
        self.running = Gauge(
            "inference_worker_running_sequences",
            "Sequences admitted or waiting in the engine",
            model,
            registry=r,
        )
        self.kv_used = Gauge(
            "inference_worker_kv_cache_tokens", "Tokens held in the KV cache", model, registry=r
        )
        self.kv_capacity = Gauge(
            "inference_worker_kv_cache_capacity_tokens",
            "KV-cache budget in tokens",
            model,
            registry=r,
        )
        self.engine_requests = Gauge(
            "inference_worker_engine_requests",
            "Requests in the engine's own queue (vLLM), by state: running or waiting",
            [*model, "state"],
            registry=r,
        )
        self.prefix_queries = Gauge(
            "inference_worker_prefix_cache_queried_tokens",
            "Prompt tokens looked up in the engine's prefix cache since the engine started",
            model,
            registry=r,
        )
        self.prefix_hits = Gauge(
            "inference_worker_prefix_cache_hit_tokens",
            "Prompt tokens found in the engine's prefix cache since the engine started",
            model,
            registry=r,
        )
        self.generated = Counter(
            "inference_worker_generated_tokens", "Tokens generated", model, registry=r
        )
        self.busy = Counter(
            "inference_worker_busy_seconds",
            "Time with at least one sequence running (heartbeat resolution)",
            model,
            registry=r,
        )
        self.load_seconds = Gauge(
            "inference_worker_model_load_seconds",
            "Time the model's last load took",
            model,
            registry=r,
        )
        self.cost = Gauge(
            "inference_worker_cost_per_1k_tokens_dollars",
            "GPU price times busy time, per thousand generated tokens",
            model,
            registry=r,
        )

    def tokens_generated(self, model_id: str, tokens: int) -> None:
        self.generated.labels(model_id).inc(tokens)
        self._tokens[model_id] = self._tokens.get(model_id, 0) + tokens

    def model_loaded(self, model_id: str, seconds: float) -> None:
        self.load_seconds.labels(model_id).set(seconds)

    def observe(self, sample: DeviceSample, engines: list[Engine]) -> None:
        """Updates the gauges from a heartbeat's device sample and engine figures."""
        now = time.monotonic()
        elapsed, self._last_tick = now - self._last_tick, now
        self.utilization.labels(sample.gpu_id).set(sample.utilization_percent / 100.0)
        self.memory_used.labels(sample.gpu_id).set(sample.memory_used_bytes)
        self.memory_total.labels(sample.gpu_id).set(sample.memory_total_bytes)
        self.temperature.labels(sample.gpu_id).set(sample.temperature_celsius)
        self.power.labels(sample.gpu_id).set(sample.power_watts)
        for engine in engines:
            model_id, stats = engine.spec.model_id, engine.stats()
            self.running.labels(model_id).set(stats.running)
            self.kv_used.labels(model_id).set(stats.kv_tokens_used)
            self.kv_capacity.labels(model_id).set(stats.kv_tokens_capacity)
            self.engine_requests.labels(model_id, "running").set(stats.engine_running)
            self.engine_requests.labels(model_id, "waiting").set(stats.engine_waiting)
            self.prefix_queries.labels(model_id).set(stats.prefix_cache_queries)
            self.prefix_hits.labels(model_id).set(stats.prefix_cache_hits)
            if stats.running:
                self.busy.labels(model_id).inc(elapsed)
                self._busy[model_id] = self._busy.get(model_id, 0.0) + elapsed
            tokens = self._tokens.get(model_id, 0)
            if tokens and self._price_per_second:
                cost = self._price_per_second * self._busy.get(model_id, 0.0)
                self.cost.labels(model_id).set(cost / (tokens / 1000.0))
