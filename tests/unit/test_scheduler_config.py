"""The scheduler's config: nested sections load straight into the core's dataclasses, each
default is stated (and asserted) once, and the flat keys of earlier releases still load."""

import logging

import pytest

from services.common.config import ConfigError
from services.scheduler import config as scheduler_config
from services.scheduler.core.admission import AdmissionRules
from services.scheduler.core.autoscaling import ScalingBounds, ScalingPolicy
from services.scheduler.core.settings import DispatchRules
from services.scheduler.core.types import Priority

MODELS = [{"id": "a", "engine": "simulated", "min_workers": 1, "max_workers": 3}]


def load(section: dict, env: dict | None = None):
    return scheduler_config.load({"scheduler": section, "models": MODELS}, env or {}, {})


def test_each_default_is_the_one_its_dataclass_states():
    config = load({})
    assert config.admission == AdmissionRules(
        queue_capacity=1024,
        shed_low_at=0.7,
        shed_medium_at=0.9,
        full_retry_after_ms=1000,
        degrade_at=0.5,
        low_max_tokens_cap=0,
        fallbacks={},
        rate_window_s=30.0,
    )
    assert config.dispatch == DispatchRules(
        placement="kv_aware",
        preemption=True,
        starvation_bound_s=30.0,
        lease_start_timeout_s=10.0,
        recovery_s=2.0,
        load_timeout_s=300.0,
    )
    assert config.autoscaling == ScalingPolicy(
        enabled=False,
        target_utilization=0.7,
        tolerance=0.1,
        max_wait_high_s=1.0,
        max_wait_medium_s=5.0,
        max_wait_low_s=30.0,
        scale_up_cooldown_s=15.0,
        scale_down_cooldown_s=60.0,
        warmup_s=10.0,
        cold_start_timeout_s=120.0,
        arrival_window_s=10.0,
    )
    settings = config.core_settings()
    # suspect after the 4 quiet intervals a worker whose report did not change may let pass,
    # and 3 missed ones; removed 3 s after its session closed
    assert (settings.heartbeat_s, settings.heartbeat_timeout_s) == (1.0, 7.0)
    assert settings.silence_bounds.closed_dead_after_s == 3.0
    assert settings.lease_expiry_s == 12.0  # start-by time plus two heartbeats
    assert settings.autoscaling.bounds_of("a") == ScalingBounds(1, 3)  # from [[models]]
    assert settings.admission.shed_at(Priority.HIGH) == 1.0
    assert settings.autoscaling.max_wait_s(Priority.LOW) == 30.0


def test_nested_sections_and_their_environment_variables_load_into_the_core_dataclasses():
    config = load(
        {
            "admission": {"queue_capacity": 64, "fallbacks": {"a": "a"}},
            "dispatch": {"placement": "round_robin"},
            "autoscaling": {"enabled": True, "warmup_s": 0},
        },
        env={"SCHEDULER_DISPATCH_PREEMPTION": "false"},
    )
    assert config.admission.queue_capacity == 64 and config.admission.fallbacks == {"a": "a"}
    assert config.dispatch.placement == "round_robin" and not config.dispatch.preemption
    assert config.autoscaling.enabled and config.autoscaling.warmup_s == 0.0


def test_flat_keys_of_earlier_releases_still_load_with_a_deprecation_warning(caplog):
    with caplog.at_level(logging.WARNING):
        config = load({"queue_capacity": 8, "autoscaling": True, "scaling_warmup_s": 1.0})
    assert config.admission.queue_capacity == 8
    assert config.autoscaling.enabled and config.autoscaling.warmup_s == 1.0
    assert "use [scheduler.admission] queue_capacity" in caplog.text
    assert "use [scheduler.autoscaling] enabled" in caplog.text


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"admission": {"bogus": 1}}, r"\[scheduler.admission\] unknown keys: bogus"),
        ({"autoscaling": {"bounds": {}}}, "unknown keys: bounds"),  # from [[models]] only
        ({"queue_capacity": 8, "admission": {"queue_capacity": 9}}, "given twice"),
        ({"dispatch": {"placement": "fastest"}}, r"\[scheduler.dispatch\] placement"),
        ({"admission": {"shed_low_at": 2}}, "shed_low_at must be in"),
        ({"autoscaling": {"target_utilization": "high"}}, "expected float"),
        ({"admission": 3}, "must be a table"),
        ({"admission": {"fallbacks": {"a": "zz"}}}, "must name"),
    ],
)
def test_bad_keys_give_a_clear_error(section, message):
    with pytest.raises(ConfigError, match=message):
        load(section)


def test_a_scheduler_serves_the_models_of_its_pool_and_a_router_knows_every_pool():
    from services.router import config as router_config

    models = [
        {"id": "a", "engine": "simulated"},
        {"id": "b", "engine": "simulated", "pool": "big"},
    ]
    default = scheduler_config.load({"models": models}, {}, {})
    big = scheduler_config.load({"models": models}, {"SCHEDULER_POOL": "big"}, {})
    assert set(default.catalog) == {"a"} and set(big.catalog) == {"b"}
    router = {"allow_anonymous": True, "pools": {"big": "127.0.0.1:50053"}}
    config = router_config.load({"router": router, "models": models}, {}, {})
    assert config.model_pools == {"b": "big"}
    assert config.scheduler_addresses() == {"": "127.0.0.1:50052", "big": "127.0.0.1:50053"}
    with pytest.raises(ConfigError, match="does not name"):
        router_config.load({"router": {"allow_anonymous": True}, "models": models}, {}, {})
