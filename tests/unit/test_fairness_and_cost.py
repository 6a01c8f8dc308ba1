import pytest

from services.gpu_worker.engines.base import EngineStats
from services.gpu_worker.metrics import WorkerMetrics
from services.gpu_worker.telemetry import DeviceSample
from services.scheduler.core.fairness import ServedTokens, jain_index
from tests.stack import sim_model


def test_jain_index_is_one_when_equal_and_one_over_n_when_one_takes_all():
    assert jain_index([5, 5, 5, 5]) == 1.0
    assert jain_index([10, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([]) is None


def test_served_tokens_forget_what_left_the_window():
    now = [0.0]
    served = ServedTokens(window_s=10, clock=lambda: now[0])
    served.add("a", 100)
    now[0] = 5
    served.add("b", 100)
    assert served.jain_index() == 1.0
    now[0] = 12  # a's tokens are older than the window now
    served.add("b", 50)
    assert served.per_tenant() == {"b": 150}


class BusyEngine:
    def __init__(self) -> None:
        self.spec = sim_model("m")

    def stats(self) -> EngineStats:
        return EngineStats(
            running=1,
            kv_tokens_used=10,
            kv_tokens_capacity=100,
            tokens_per_second=0.0,
            memory_bytes=0,
        )


def test_cost_per_thousand_tokens_is_price_times_busy_time_over_tokens():
    metrics = WorkerMetrics(gpu_price_per_hour=3600.0)  # one dollar per second
    sample = DeviceSample("cpu-0", "cpu", True, 0.0, 1, 2)
    metrics._last_tick -= 2.0  # two busy seconds since the last heartbeat
    metrics.tokens_generated("m", 500)
    metrics.observe(sample, [BusyEngine()])
    cost = metrics.registry.get_sample_value(
        "inference_worker_cost_per_1k_tokens_dollars", {"model": "m"}
    )
    assert cost == pytest.approx(4.0, rel=0.01)  # $2 for 500 tokens → $4 per 1k
