"""The three services as processes, as `make up` runs them, with the real SmolLM2 model."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference.v1 import router_pb2_grpc, types_pb2

from bench.local_system import LocalSystem

pytestmark = pytest.mark.slow

GRPCURL = str(Path(sys.prefix) / "bin" / "grpcurl")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """Scheduler, one worker and router, each its own process, on free ports."""
    local = LocalSystem(tmp_path_factory.mktemp("logs"))
    local.start(ready_timeout_s=240)
    yield local
    local.kill()


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=120
    )


def test_grpcurl_lists_the_router_and_checks_health(system):
    address = system.router_address
    listed = grpcurl(address, "list")
    assert "inference.v1.Router" in listed.stdout
    health = grpcurl(address, "grpc.health.v1.Health/Check")
    assert '"SERVING"' in health.stdout


def test_generate_streams_a_real_answer_in_several_messages(system):
    address = system.router_address
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


def test_streams_joining_a_running_batch_through_the_router_match_running_alone(system):
    cases = [
        ("Name three fruits.", 20, 0.0),
        ("What is 2 + 2?", 12, 0.3),
        ("Describe the sun in one sentence.", 24, 0.6),
        ("Say hello.", 8, 0.9),
    ]

    def generate(stub, prompt: str, max_tokens: int, delay: float = 0.0) -> str:
        time.sleep(delay)
        request = types_pb2.GenerateRequest(
            model_id="smollm2-135m", prompt=prompt, max_tokens=max_tokens
        )
        return "".join(
            m.delta.text for m in stub.Generate(request, timeout=120) if m.HasField("delta")
        )

    with grpc.insecure_channel(system.router_address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        alone = [generate(stub, p, n) for p, n, _ in cases]
        with ThreadPoolExecutor(len(cases)) as pool:
            together = list(pool.map(lambda case: generate(stub, *case), cases))
    assert together == alone
    assert all(alone)


def test_the_sample_request_works_out_of_the_box(system):
    address = system.router_address
    out = grpcurl(
        "-d",
        '{"model_id": "llama-3-70b", "prompt": "Hello", "priority": "PRIORITY_HIGH"}',
        address,
        "inference.v1.Router/Generate",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('"delta"') >= 2 and '"summary"' in out.stdout


def test_embed_through_the_router_and_kinds_are_enforced(system):
    with grpc.insecure_channel(system.router_address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        answer = stub.Embed(
            types_pb2.EmbedRequest(model_id="minilm-l6-v2", inputs=["hello", "world"]),
            timeout=60,
        )
        assert len(answer.embeddings) == 2 and answer.dimensions == 384
        assert answer.gpu_id == "cpu-0" and answer.request_id
        for wrong in (
            lambda: stub.Embed(types_pb2.EmbedRequest(model_id="smollm2-135m", inputs=["x"])),
            lambda: stub.Infer(types_pb2.GenerateRequest(model_id="minilm-l6-v2", prompt="x")),
        ):
            with pytest.raises(grpc.RpcError) as info:
                wrong()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"model_id": "gpt-17", "prompt": "Hi"}', "NotFound"),
        ('{"model_id": "smollm2-135m", "prompt": ""}', "InvalidArgument"),
        ('{"model_id": "smollm2-135m", "prompt": "Hi", "max_tokens": 99999999}', "InvalidArgument"),
    ],
)
def test_bad_requests_get_clear_codes(system, body, code):
    address = system.router_address
    out = grpcurl("-d", body, address, "inference.v1.Router/Infer")
    assert out.returncode != 0
    assert f"Code: {code}" in out.stderr


def test_openai_embeddings_over_http_with_the_real_model(system):
    import openai

    base = f"http://127.0.0.1:{system.http_port}/v1"
    client = openai.OpenAI(base_url=base, api_key="names-no-tenant", max_retries=0)
    with pytest.raises(openai.AuthenticationError):  # a wrong key is refused
        client.embeddings.create(model="minilm-l6-v2", input=["hello"])
    # anonymous (allowed on loopback): the client insists on a key, so send an empty header
    client = openai.OpenAI(
        base_url=base, api_key="-", max_retries=0, default_headers={"Authorization": ""}
    )
    answer = client.embeddings.create(model="minilm-l6-v2", input=["hello", "world"])
    assert [len(d.embedding) for d in answer.data] == [384, 384]


def test_sigterm_stops_every_service_cleanly(system):
    with grpc.insecure_channel(system.router_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    codes = system.stop(timeout_s=30)
    assert codes == {name: 0 for name in codes}, system.logs()


def test_sigterm_lets_an_in_flight_stream_finish(tmp_path):
    """A second system: SIGTERM to every process while a stream runs; the stream completes."""
    local = LocalSystem(tmp_path)
    local.start(ready_timeout_s=240)
    try:
        channel = grpc.insecure_channel(local.router_address)
        stream = router_pb2_grpc.RouterStub(channel).Generate(
            types_pb2.GenerateRequest(model_id="llama-3-70b", prompt="Hello", max_tokens=60),
            timeout=60,
        )
        first = next(stream)
        assert first.HasField("delta")
        codes_future = ThreadPoolExecutor(1).submit(local.stop, 30)
        rest = list(stream)
        assert rest[-1].HasField("summary")
        assert rest[-1].summary.completion_tokens == 60
        assert codes_future.result() == {name: 0 for name in local.procs}, local.logs()
        channel.close()
    finally:
        local.kill()
