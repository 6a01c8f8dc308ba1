"""A fuzzer of our own: generated requests (well-formed protobuf with any field values, raw
bytes, JSON of any shape) against Router.Generate/Infer/Embed and the HTTP door of a system
running as processes. Only documented statuses come back (never INTERNAL or UNKNOWN over
gRPC, never a 5xx other than 503/504 over HTTP, always a JSON error body), and the system
still serves afterwards."""

import json
import urllib.error
import urllib.request

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inference.v1 import router_pb2_grpc, types_pb2

from bench.sim_cluster import MODEL_ID, sim_cluster

pytestmark = pytest.mark.slow

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)
texts = st.text(max_size=80) | st.sampled_from(["", " ", "\x00", "é" * 40, "x" * 40_000])


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    cluster = sim_cluster(tmp_path_factory.mktemp("fuzz"), workers=1, slots=16, step_ms=1.0)
    cluster.start(ready_timeout_s=120)
    channel = grpc.insecure_channel(cluster.router_address)
    yield cluster, router_pb2_grpc.RouterStub(channel), channel
    channel.close()
    cluster.kill()


sampling = st.builds(
    types_pb2.SamplingParams,
    temperature=floats,
    top_p=floats,
    top_k=uint32,
    seed=uint64,
    stop=st.lists(texts, max_size=6),
)
generate_requests = st.builds(
    types_pb2.GenerateRequest,
    model_id=st.sampled_from([MODEL_ID, "", "no-such-model"]) | st.text(max_size=20),
    prompt=texts,
    priority=st.integers(0, 2**31 - 1),
    max_tokens=st.integers(0, 40) | uint32,
    sampling=sampling,
    request_id=st.text(max_size=140),
    allow_fallback=st.booleans(),
)
embed_requests = st.builds(
    types_pb2.EmbedRequest,
    model_id=st.sampled_from([MODEL_ID, ""]) | st.text(max_size=20),
    inputs=st.lists(texts, max_size=300),
    priority=st.integers(0, 2**31 - 1),
    request_id=st.text(max_size=140),
)


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@FUZZ
@given(request=generate_requests)
def test_generate_and_infer_answer_only_documented_statuses(system, request):
    _, stub, _ = system
    assert code_of(lambda: stub.Infer(request, timeout=10)) in DOCUMENTED
    assert code_of(lambda: list(stub.Generate(request, timeout=10))) in DOCUMENTED


@FUZZ
@given(request=embed_requests)
def test_embed_answers_only_documented_statuses(system, request):
    _, stub, _ = system
    assert code_of(lambda: stub.Embed(request, timeout=10)) in DOCUMENTED


@FUZZ
@given(body=st.binary(max_size=512))
def test_arbitrary_bytes_are_a_clear_status(system, body):
    _, _, channel = system
    raw = channel.unary_unary(
        "/inference.v1.Router/Infer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    assert code_of(lambda: raw(body, timeout=10)) in DOCUMENTED


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
openai_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just(MODEL_ID) | json_values,
        "prompt": texts | json_values,
        "messages": json_values | st.just([{"role": "user", "content": "hi"}]),
        "max_tokens": st.integers(-5, 50) | json_values,
        "temperature": json_values,
        "top_p": json_values,
        "seed": json_values,
        "stop": json_values,
        "stream": json_values,
        "n": json_values,
        "input": json_values,
    },
)


@FUZZ
@given(
    path=st.sampled_from(
        ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/api/v1/inference"]
    ),
    body=openai_bodies | json_values,
)
def test_the_http_door_answers_4xx_with_json_never_500(system, path, body):
    cluster, _, _ = system
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.http_port}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    assert status < 500 or status in (503, 504), text
    if status >= 400:
        assert json.loads(text)["error"]["message"]


def test_after_all_that_the_system_still_serves(system):
    _, stub, _ = system
    answer = stub.Infer(
        types_pb2.GenerateRequest(model_id=MODEL_ID, prompt="still here?", max_tokens=4),
        timeout=20,
    )
    assert answer.completion_tokens == 4
