"""Deployment files: the Kubernetes manifests render and validate against the schemas, and
agree with the cluster config; the compose file and Dockerfiles point at files that exist."""

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from scripts.engine_config import move
from services.actuator import config as actuator_config
from services.common.catalog import parse_catalog
from services.common.config import ConfigError, read_toml
from services.common.lease_token import LeaseSigner, public_key_text
from services.gpu_worker import config as worker_config
from services.router import config as router_config
from services.scheduler import config as scheduler_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CLUSTER_CONFIG = K8S / "config.toml"
SECRET = {"internal_secret": "0123456789abcdef0123456789abcdef"}
LEASE = "inference-lease-key"
PINNED = {"WORKER_LEASE_PUBLIC_KEYS": public_key_text(LeaseSigner.generate().public_key)}
KUBERNETES_VERSION = "1.32.0"  # the oldest release these manifests are meant for


def render(folder: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return render(K8S)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_manifests_validate_against_the_kubernetes_schemas(rendered):
    core = [d for d in rendered if d["kind"] != "ScaledObject"]
    assert {d["kind"] for d in core} >= {"Deployment", "Service", "ConfigMap", "Secret"}
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert all(d["metadata"].get("namespace") == "inference" for d in rendered[1:])


def test_every_container_has_grpc_or_http_probes(rendered):
    for name, deployment in by_kind(rendered, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in container, f"{name}: no {probe}"
            if name != "prometheus":
                port = container["readinessProbe"]["grpc"]["port"]
                assert port in {p["containerPort"] for p in container["ports"]}


def worker_model(deployment: dict) -> str:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return next(e["value"] for e in container["env"] if e["name"] == "WORKER_MODELS")


def every_model() -> dict:
    return parse_catalog(read_toml(CLUSTER_CONFIG)["models"])


def test_each_model_has_a_worker_deployment_scaled_by_keda_within_its_bounds(rendered):
    catalog = every_model()
    workers = {
        name: d
        for name, d in by_kind(rendered, "Deployment").items()
        if d["metadata"]["labels"].get("app.kubernetes.io/name") == "worker"
    }
    assert {worker_model(d) for d in workers.values()} == set(catalog)
    scaled = by_kind(rendered, "ScaledObject")
    assert set(scaled) == set(workers)
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        model = catalog[worker_model(workers[name])]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
            model.min_workers,
            model.max_workers,
        )
        [trigger] = spec["triggers"]
        query = trigger["metadata"]["query"]
        assert f'inference_scheduler_desired_workers{{model="{model.model_id}"}}' in query
        assert trigger["metadata"]["threshold"] == "1"
        # KEDA's CRD types trigger metadata as a map of strings
        assert all(isinstance(v, str) for v in trigger["metadata"].values())
        assert trigger["metadata"]["ignoreNullValues"] == "false"  # no value: keep replicas


def test_each_pool_has_its_scheduler_and_its_workers_register_with_it(rendered):
    router = router_config.load(_with_real_key(read_toml(CLUSTER_CONFIG)), {}, SECRET)
    schedulers = {
        name: d
        for name, d in by_kind(rendered, "Deployment").items()
        if d["metadata"]["labels"]["app.kubernetes.io/name"] == "scheduler"
    }
    services = by_kind(rendered, "Service")
    for pool, address in router.scheduler_addresses().items():
        name = address.split(":")[0]
        [container] = schedulers[name]["spec"]["template"]["spec"]["containers"]
        assert (
            container["args"][-2:] == ["--pool", pool]
            if pool
            else "--pool" not in container["args"]
        )
        selector = services[name]["spec"]["selector"]
        assert selector["inference.example.com/pool"] == (pool or "default")
    for deployment in by_kind(rendered, "Deployment").values():
        if deployment["metadata"]["labels"].get("app.kubernetes.io/name") != "worker":
            continue
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        pool = every_model()[worker_model(deployment)].pool
        expected = router.scheduler_addresses()[pool]
        assert env.get("WORKER_SCHEDULER_ADDRESS", "scheduler:50052") == expected


def _with_real_key(data: dict) -> dict:
    data["router"]["tenants"][0]["api_key_sha256"] = hashlib.sha256(b"a real key").hexdigest()
    return data


def test_gpu_workers_request_one_gpu_each_and_drain_within_their_grace(rendered):
    catalog = every_model()
    grace = worker_config.load(read_toml(CLUSTER_CONFIG), PINNED, SECRET).shutdown_grace_s
    for deployment in by_kind(rendered, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        if deployment["metadata"]["labels"].get("app.kubernetes.io/name") != "worker":
            continue
        limits = container["resources"]["limits"]
        if catalog[worker_model(deployment)].simulated:
            assert "nvidia.com/gpu" not in limits
        else:
            assert limits["nvidia.com/gpu"] == 1
            assert container["image"].endswith("inference-serving-cuda:0.1.0")
        assert pod["terminationGracePeriodSeconds"] > grace


def test_the_cluster_config_loads_for_every_service_once_its_placeholders_are_replaced():
    data = read_toml(CLUSTER_CONFIG)
    with pytest.raises(ConfigError, match="placeholder"):  # the shipped tenant key
        router_config.load(data, {}, SECRET)
    with pytest.raises(ConfigError, match="INFERENCE_INTERNAL_SECRET"):  # no secret given
        scheduler_config.load(data, {}, {})
    router = router_config.load(_with_real_key(data), {}, SECRET)
    assert not router.allow_anonymous and router.tenants
    scheduler = scheduler_config.load(data, {}, SECRET)
    assert scheduler.autoscaling.enabled
    env = {"WORKER_MODELS": "smollm2-135m"}
    with pytest.raises(ConfigError, match="must be pinned"):  # no lease key pinned
        worker_config.load(data, env, SECRET)
    worker = worker_config.load(data, env | PINNED, SECRET)
    assert worker.model_ids == ["smollm2-135m"] and not worker.load_on_command
    actuator_config.load(data, {}, {})


def test_only_schedulers_hold_the_lease_signing_key_and_workers_pin_its_public_half(rendered):
    for name, deployment in by_kind(rendered, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        role = deployment["metadata"]["labels"]["app.kubernetes.io/name"]
        lease_volumes = [
            v for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName") == LEASE
        ]
        references = [
            e["valueFrom"]["secretKeyRef"]["key"]
            for e in container.get("env", [])
            if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == LEASE
        ]
        if role == "scheduler":
            [volume] = lease_volumes
            assert [i["key"] for i in volume["secret"]["items"]] == ["signing-key.pem"], name
        else:
            assert not lease_volumes, name
            assert references == (["public-key"] if role == "worker" else []), name


def test_compose_runs_the_system_with_gpu_reservations_and_existing_files():
    compose_file = ROOT / "deploy" / "compose" / "docker-compose.yml"
    compose = yaml.safe_load(compose_file.read_text())
    services = compose["services"]
    assert set(services) >= {"router", "scheduler", "workers", "jaeger", "prometheus", "grafana"}
    [gpus] = services["workers"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["capabilities"] == ["gpu"] and gpus["driver"] == "nvidia"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (compose_file.parent / source).exists(), source


def test_the_vllm_overlay_runs_the_embedded_engines_models_on_vllm_images_with_a_gpu():
    docs = render(ROOT / "deploy" / "k8s-vllm")
    for doc in docs:
        if doc["kind"] != "ScaledObject":
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    overlay = parse_catalog(read_toml(ROOT / "deploy" / "k8s-vllm" / "config.toml")["models"])
    base = read_toml(CLUSTER_CONFIG)
    move(base, "vllm")  # the overlay's config is the script's output for the cluster's
    assert read_toml(ROOT / "deploy" / "k8s-vllm" / "config.toml") == base
    [config_map] = [d for d in docs if d["metadata"]["name"].startswith("inference-config")]
    assert 'engine = "vllm"' in config_map["data"]["config.toml"]
    workers = [
        d
        for d in by_kind(docs, "Deployment").values()
        if d["metadata"]["labels"].get("app.kubernetes.io/name") == "worker"
    ]
    assert {overlay[worker_model(d)].engine for d in workers} == {
        "vllm",
        "vllm-embedding",
        "simulated",
    }
    for deployment in workers:
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        on_vllm = overlay[worker_model(deployment)].engine.startswith("vllm")
        assert container["image"].endswith("inference-serving-vllm:0.1.0") == on_vllm
        if on_vllm:
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
            [shm] = [v for v in pod["volumes"] if v["name"] == "shm"]
            assert shm["emptyDir"]["medium"] == "Memory"
            assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_compose_publishes_the_operators_tools_on_this_host_only():
    """Jaeger, Prometheus and Grafana (anonymous viewers) carry no authentication of their
    own: they listen on loopback; the router is the one public door."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if name != "router":
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda", "Dockerfile.vllm"])
def test_dockerfiles_copy_files_that_exist(dockerfile):
    text = (ROOT / "deploy" / "docker" / dockerfile).read_text()
    sources = [
        part
        for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE)
        for part in line.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
