"""The three services as processes, as `make up` runs them, with the real SmolLM2 model."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference.v1 import router_pb2_grpc, types_pb2

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = str(Path(sys.prefix) / "bin" / "grpcurl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """Scheduler, one worker and router, each its own process, on free ports."""
    logs = tmp_path_factory.mktemp("logs")
    ports = {name: free_port() for name in ("router", "scheduler", "worker")}
    env = {
        **os.environ,
        "ROUTER_LISTEN": f"127.0.0.1:{ports['router']}",
        "ROUTER_SCHEDULER_ADDRESS": f"127.0.0.1:{ports['scheduler']}",
        "SCHEDULER_LISTEN": f"127.0.0.1:{ports['scheduler']}",
        "WORKER_LISTEN": f"127.0.0.1:{ports['worker']}",
        "WORKER_SCHEDULER_ADDRESS": f"127.0.0.1:{ports['scheduler']}",
        "WORKER_CACHE_DIR": str(ROOT / ".cache" / "models"),
    }
    procs = {}
    for name, module in [
        ("scheduler", "services.scheduler"),
        ("worker", "services.gpu_worker"),
        ("router", "services.router"),
    ]:
        out = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    address = f"127.0.0.1:{ports['router']}"
    try:
        ready = subprocess.run(
            [sys.executable, "scripts/wait_ready.py", "--address", address, "--timeout", "240"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert ready.returncode == 0, ready.stdout + ready.stderr + dump(logs)
        yield address, procs, logs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


def dump(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=120
    )


def test_grpcurl_lists_the_router_and_checks_health(system):
    address, _, _ = system
    listed = grpcurl(address, "list")
    assert "inference.v1.Router" in listed.stdout
    health = grpcurl(address, "grpc.health.v1.Health/Check")
    assert '"SERVING"' in health.stdout


def test_generate_streams_a_real_answer_in_several_messages(system):
    address, _, _ = system
    with grpc.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        request = types_pb2.GenerateRequest(
            model_id="smollm2-135m",
            prompt="What is the capital of France?",
            priority=types_pb2.PRIORITY_HIGH,
            max_tokens=32,
        )
        messages = list(stub.Generate(request, timeout=120))
    deltas = [m.delta.text for m in messages if m.HasField("delta")]
    assert len(deltas) >= 3
    assert "Paris" in "".join(deltas)
    summary = messages[-1].summary
    assert summary.model_id == "smollm2-135m" and summary.gpu_id == "cpu-0"
    assert summary.completion_tokens >= 3


def test_the_sample_request_works_out_of_the_box(system):
    address, _, _ = system
    out = grpcurl(
        "-d",
        '{"model_id": "llama-3-70b", "prompt": "Hello", "priority": "PRIORITY_HIGH"}',
        address,
        "inference.v1.Router/Generate",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('"delta"') >= 2 and '"summary"' in out.stdout


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"model_id": "gpt-17", "prompt": "Hi"}', "NotFound"),
        ('{"model_id": "smollm2-135m", "prompt": ""}', "InvalidArgument"),
        ('{"model_id": "smollm2-135m", "prompt": "Hi", "max_tokens": 99999999}', "InvalidArgument"),
    ],
)
def test_bad_requests_get_clear_codes(system, body, code):
    address, _, _ = system
    out = grpcurl("-d", body, address, "inference.v1.Router/Infer")
    assert out.returncode != 0
    assert f"Code: {code}" in out.stderr


def test_sigterm_stops_every_service_cleanly(system):
    address, procs, logs = system
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    for name in ("router", "worker", "scheduler"):
        procs[name].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for name, proc in procs.items():
        code = proc.wait(timeout=max(1, deadline - time.monotonic()))
        assert code == 0, f"{name} exited {code}\n{dump(logs)}"
