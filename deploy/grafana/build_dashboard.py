"""Writes dashboards/inference.json: python deploy/grafana/build_dashboard.py"""

import json
from pathlib import Path

PANELS = [
    (
        "Requests/s by final status",
        "sum by (code) (rate(inference_router_requests_total[1m]))",
        "reqps",
    ),
    (
        "Time to first token p50 / p95",
        [
            "histogram_quantile(0.5, sum by (le, model) "
            "(rate(inference_router_time_to_first_token_seconds_bucket[5m])))",
            "histogram_quantile(0.95, sum by (le, model) "
            "(rate(inference_router_time_to_first_token_seconds_bucket[5m])))",
        ],
        "s",
    ),
    (
        "Inter-token latency p50 / p95",
        [
            "histogram_quantile(0.5, sum by (le, model) "
            "(rate(inference_router_inter_token_latency_seconds_bucket[5m])))",
            "histogram_quantile(0.95, sum by (le, model) "
            "(rate(inference_router_inter_token_latency_seconds_bucket[5m])))",
        ],
        "s",
    ),
    (
        "Tokens/s by model",
        "sum by (model) (rate(inference_router_generated_tokens_total[1m]))",
        "short",
    ),
    ("Queue depth by priority", "sum by (priority) (inference_scheduler_queue_depth)", "short"),
    (
        "Queue wait p95 by priority",
        "histogram_quantile(0.95, sum by (le, priority) "
        "(rate(inference_scheduler_queue_wait_seconds_bucket[5m])))",
        "s",
    ),
    (
        "Leases and slots per worker",
        ["inference_scheduler_leases", "inference_scheduler_slots"],
        "short",
    ),
    ("GPU utilization", "inference_worker_gpu_utilization_ratio", "percentunit"),
    (
        "GPU memory used / total",
        ["inference_worker_gpu_memory_used_bytes", "inference_worker_gpu_memory_total_bytes"],
        "bytes",
    ),
    (
        "Shed and rate-limited per tenant",
        [
            "sum by (tenant) (rate(inference_scheduler_shed_total[5m]))",
            "sum by (tenant) (rate(inference_router_rate_limited_total[5m]))",
        ],
        "reqps",
    ),
    ("Tenant fairness (Jain's index)", "inference_scheduler_tenant_fairness_jain", "short"),
    ("Cost per 1k tokens", "inference_worker_cost_per_1k_tokens_dollars", "currencyUSD"),
    (
        "KV cache use",
        "inference_worker_kv_cache_tokens / inference_worker_kv_cache_capacity_tokens",
        "percentunit",
    ),
    ("Model load time", "inference_worker_model_load_seconds", "s"),
    (
        "Workers per model: desired (autoscaling) / current",
        ["inference_scheduler_desired_workers", "inference_scheduler_model_workers"],
        "short",
    ),
    (
        "Slot utilization per model",
        "inference_scheduler_model_slot_utilization_ratio",
        "percentunit",
    ),
    (
        "Prefix cache hit rate per model and worker (prompt tokens not prefilled again)",
        "delta(inference_worker_prefix_cache_hit_tokens[5m])"
        " / delta(inference_worker_prefix_cache_queried_tokens[5m])",
        "percentunit",
    ),
    (
        "Prefill tokens saved by the prefix cache, per second",
        "sum by (model) (delta(inference_worker_prefix_cache_hit_tokens[5m])) / 300",
        "short",
    ),
]


def panel(index: int, title: str, queries, unit: str) -> dict:
    queries = [queries] if isinstance(queries, str) else queries
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + i), "expr": q} for i, q in enumerate(queries)],
    }


def main() -> None:
    dashboard = {
        "title": "Inference serving",
        "uid": "inference-serving",
        "schemaVersion": 39,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }
    out = Path(__file__).parent / "dashboards" / "inference.json"
    out.write_text(json.dumps(dashboard, indent=2) + "\n")


if __name__ == "__main__":
    main()
