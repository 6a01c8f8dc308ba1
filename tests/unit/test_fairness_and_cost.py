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
            max_slots=1,
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


def test_a_device_is_priced_by_its_name_and_the_default_config_prices_each_kind():
    from services.common.config import read_toml
    from services.gpu_worker import config as worker_config

    config = worker_config.load(read_toml("deploy/local/config.toml"), {}, {})
    assert config.price_per_hour("NVIDIA H100 80GB HBM3", False) == 2.50
    assert config.price_per_hour("NVIDIA A100-SXM4-40GB", False) == 1.30
    assert config.price_per_hour("Intel Xeon", True) == 0.10  # the CPU of a laptop
    assert config.price_per_hour("Some Other GPU", False) == config.gpu_price_per_hour


async def test_rate_limited_series_exist_at_zero_for_every_known_tenant():
    import hashlib

    from services.router.admission import Admission
    from services.router.config import RouterConfig, TenantSpec
    from services.router.metrics import RouterMetrics

    tenants = (TenantSpec("acme", hashlib.sha256(b"k").hexdigest()),)
    metrics = RouterMetrics()
    Admission(RouterConfig(tenants=tenants, allow_anonymous=True), metrics)
    for tenant in ("acme", "anonymous"):
        value = metrics.registry.get_sample_value(
            "inference_router_rate_limited_total", {"tenant": tenant}
        )
        assert value == 0.0
