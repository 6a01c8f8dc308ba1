"""The scheduler's per-worker gauges follow the workers: set each refresh, gone with them;
a refresh runs when the registry is scraped, on the event loop."""

import asyncio
import threading
from collections import Counter
from types import SimpleNamespace

from prometheus_client import Gauge

from services.common.metrics import RefreshedRegistry
from services.scheduler.core.fairness import ServedTokens
from services.scheduler.core.types import ModelSlots, WorkerRecord
from services.scheduler.metrics import SchedulerMetrics
from tests.factories import Clock


def worker(worker_id: str, leases: int) -> WorkerRecord:
    record = WorkerRecord(worker_id, f"{worker_id}:1", "gpu-0", {"m": ModelSlots("m", 4, True)}, 0)
    record.leases = {f"{worker_id}-l{i}" for i in range(leases)}
    return record


def refresh(metrics: SchedulerMetrics, *workers: tuple[WorkerRecord, str | None]) -> None:
    sessions = [
        SimpleNamespace(
            device=SimpleNamespace(
                gpu_id=gpu, utilization_percent=50.0, memory_used_bytes=1, memory_total_bytes=2
            )
        )
        if gpu
        else None
        for _, gpu in workers
    ]
    snapshot = SimpleNamespace(
        queues={}, workers=[(w, s) for (w, _), s in zip(workers, sessions, strict=True)], scaling=[]
    )
    metrics.refresh(SimpleNamespace(actions=Counter(), snapshot=lambda: snapshot))


def series(metrics: SchedulerMetrics, name: str) -> dict[tuple, float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_a_workers_series_are_set_each_refresh_and_removed_when_it_leaves():
    metrics = SchedulerMetrics(ServedTokens(60.0, Clock()))
    refresh(metrics, (worker("a", 1), "gpu-0"), (worker("b", 2), None))
    assert series(metrics, "inference_scheduler_leases") == {
        (("worker", "a"),): 1.0,
        (("worker", "b"),): 2.0,
    }
    assert list(series(metrics, "inference_fleet_gpu_utilization_ratio")) == [
        (("gpu_id", "gpu-0"), ("worker", "a"))
    ]
    refresh(metrics, (worker("a", 3), "gpu-1"))
    assert series(metrics, "inference_scheduler_leases") == {(("worker", "a"),): 3.0}
    assert list(series(metrics, "inference_fleet_gpu_utilization_ratio")) == [
        (("gpu_id", "gpu-1"), ("worker", "a"))
    ]
    assert series(metrics, "inference_scheduler_workers")[(("state", "ready"),)] == 1.0


async def test_a_scrape_refreshes_the_gauges_on_the_event_loop():
    registry = RefreshedRegistry()
    gauge = Gauge("refreshed", "set by the refresh", registry=registry)
    threads: list[threading.Thread] = []

    def refresh() -> None:
        threads.append(threading.current_thread())
        gauge.set(len(threads))

    assert registry.get_sample_value("refreshed") == 0  # unbound: nothing to refresh
    registry.bind(asyncio.get_running_loop(), refresh)
    scraped = await asyncio.to_thread(registry.get_sample_value, "refreshed")  # metrics thread
    assert scraped == 1 and threads == [threading.current_thread()]  # it ran on the loop
    assert registry.get_sample_value("refreshed") == 2  # read on the loop itself
