"""The observability deploy files agree with the metrics the services export."""

import json
import re
from pathlib import Path

import yaml

from services.gpu_worker.config import WorkerConfig
from services.gpu_worker.metrics import WorkerMetrics
from services.router.config import RouterConfig
from services.router.metrics import RouterMetrics
from services.scheduler.config import SchedulerConfig
from services.scheduler.core.fairness import ServedTokens
from services.scheduler.metrics import SchedulerMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SUFFIXES = ("_bucket", "_total", "_count", "_sum")


def exported_metric_names() -> set[str]:
    registries = [
        RouterMetrics().registry,
        WorkerMetrics(0.0).registry,
        SchedulerMetrics(ServedTokens(60, lambda: 0.0)).registry,
    ]
    return {family.name for registry in registries for family in registry.collect()}


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_every_dashboard_query_uses_an_exported_metric():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "inference.json").read_text())
    used = {
        base_name(name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"inference_[a-z0-9_]+", target["expr"])
    }
    assert used, "the dashboard queries nothing"
    assert used <= exported_metric_names(), sorted(used - exported_metric_names())


def test_prometheus_scrapes_the_default_metrics_ports():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    for listen in (
        RouterConfig.__dataclass_fields__["metrics_listen"].default,
        SchedulerConfig().metrics_listen,
        WorkerConfig().metrics_listen,
    ):
        assert f"localhost:{listen.rsplit(':', 1)[1]}" in targets
