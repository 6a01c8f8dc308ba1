import hashlib

import pytest

from services.common.catalog import parse_catalog
from services.common.config import ConfigError, read_toml
from services.common.errors import Unauthenticated
from services.gpu_worker import config as worker_config
from services.router import config as router_config
from services.router.auth import ANONYMOUS, Authenticator
from services.router.config import TenantSpec
from services.scheduler import config as scheduler_config

DEFAULT_CONFIG = "deploy/local/config.toml"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_api_key_picks_the_tenant_and_wrong_or_missing_keys_are_refused():
    auth = Authenticator([TenantSpec("acme", sha("s3cret"))], allow_anonymous=False)
    assert auth.tenant_for([("authorization", "Bearer s3cret")]) == "acme"
    for metadata in ([], [("authorization", "Bearer nope")], [("authorization", "s3cret")]):
        with pytest.raises(Unauthenticated):
            auth.tenant_for(metadata)


def test_anonymous_callers_when_allowed():
    auth = Authenticator([], allow_anonymous=True)
    assert auth.tenant_for([]) == ANONYMOUS
    assert auth.tenant_for([("authorization", "Bearer ")]) == ANONYMOUS  # an empty key
    with pytest.raises(Unauthenticated):
        auth.tenant_for([("authorization", "Bearer not-a-key")])


def test_the_default_config_loads_for_every_service():
    data = read_toml(DEFAULT_CONFIG)
    router = router_config.load(data, {}, {})
    scheduler = scheduler_config.load(data, {}, {})
    worker = worker_config.load(data, {}, {})
    assert router.listen == "127.0.0.1:50051"
    assert set(scheduler.catalog) == {"smollm2-135m", "llama-3-70b", "minilm-l6-v2"}
    assert worker.model_ids == ["smollm2-135m", "llama-3-70b", "minilm-l6-v2"]
    assert scheduler.catalog["minilm-l6-v2"].kind == "embedding"
    assert scheduler.catalog["llama-3-70b"].simulated


def test_environment_and_flags_override_the_file_in_that_order():
    data = read_toml(DEFAULT_CONFIG)
    env = {"SCHEDULER_ADMISSION_QUEUE_CAPACITY": "7", "SCHEDULER_LISTEN": "127.0.0.1:1"}
    config = scheduler_config.load(data, env, {"listen": "127.0.0.1:2"})
    assert config.admission.queue_capacity == 7
    assert config.listen == "127.0.0.1:2"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"scheduler": {"queue_capacity": "many"}}, "expected int"),
        ({"scheduler": {"bogus": 1}}, "unknown keys"),
        ({"scheduler": {"queue_capacity": 0}}, "queue_capacity"),
        ({"models": [{"id": "x", "engine": "magic"}]}, "engine must be"),
        ({"models": [{"id": "x", "engine": "transformers"}]}, "needs a source"),
        ({"models": [{"id": "x", "engine": "simulated"}] * 2}, "duplicate"),
    ],
)
def test_bad_config_gives_a_clear_error(data, message):
    with pytest.raises(ConfigError, match=message):
        scheduler_config.load(data, {}, {})


TENANT = {"id": "t", "api_key_sha256": hashlib.sha256(b"a real key").hexdigest()}
SECRET = {"internal_secret": "0123456789abcdef0123456789abcdef"}


def test_anonymous_access_is_off_by_default_and_refused_off_loopback():
    with pytest.raises(ConfigError, match="loopback"):
        router_config.load({"router": {"listen": "0.0.0.0:50051", "allow_anonymous": True}}, {}, {})
    with pytest.raises(ConfigError, match="loopback"):  # the HTTP door too
        router_config.load(
            {"router": {"http_listen": "0.0.0.0:8000", "allow_anonymous": True}}, {}, {}
        )
    with pytest.raises(ConfigError, match="nobody could call"):
        router_config.load({"router": {}}, {}, {})
    config = router_config.load(
        {"router": {"listen": "0.0.0.0:50051", "tenants": [TENANT]}}, {}, {}
    )
    assert not config.allow_anonymous


def test_internal_ports_off_loopback_need_the_fleets_secret_and_no_placeholder():
    scheduler = {"scheduler": {"listen": "0.0.0.0:50052"}}
    with pytest.raises(ConfigError, match="INFERENCE_INTERNAL_SECRET"):
        scheduler_config.load(scheduler, {}, {})
    assert scheduler_config.load(scheduler, {}, SECRET).internal_secret
    catalog = [{"id": "a", "engine": "simulated"}]
    worker = {"worker": {"listen": "0.0.0.0:50061"}, "models": catalog}
    with pytest.raises(ConfigError, match="INFERENCE_INTERNAL_SECRET"):
        worker_config.load(worker, {}, {})
    router = {"router": {"scheduler_address": "scheduler:50052", "tenants": [TENANT]}}
    with pytest.raises(ConfigError, match="INFERENCE_INTERNAL_SECRET"):
        router_config.load(router, {}, {})
    placeholder = {"internal_secret": "change-me-to-a-long-random-string"}
    with pytest.raises(ConfigError, match="placeholder"):
        scheduler_config.load({"scheduler": {}}, {}, placeholder)


def test_the_shipped_placeholder_api_key_is_refused():
    demo = {"id": "demo", "api_key_sha256": hashlib.sha256(b"demo-key-change-me").hexdigest()}
    with pytest.raises(ConfigError, match="placeholder"):
        router_config.load({"router": {"tenants": [demo]}}, {}, {})


def test_worker_refuses_models_missing_from_the_catalog():
    catalog = {"models": [{"id": "a", "engine": "simulated"}]}
    with pytest.raises(ConfigError, match="not in"):
        worker_config.load(catalog, {"WORKER_MODELS": "b"}, {})
    assert parse_catalog(catalog["models"])["a"].max_slots == 4
