"""The HTTP door: the original JSON API and the OpenAI API, with the official client."""

import asyncio
import hashlib
import json
import urllib.error
import urllib.request

import aiohttp
import openai
import pytest
from grpc_health.v1 import health_pb2

from services.router.config import TenantSpec
from services.router.ratelimit import Limits
from tests.stack import sim_model, start_stack


@pytest.fixture
async def http_stack():
    stack = await start_stack(
        [sim_model(), sim_model("sim-two")],
        tenants=[
            TenantSpec(
                "acme",
                hashlib.sha256(b"k-acme").hexdigest(),
                limits=Limits(requests_per_s=1, burst_requests=1),
            ),
            TenantSpec("ai", hashlib.sha256(b"k-ai").hexdigest()),
        ],
        allow_anonymous=True,
    )
    yield stack, f"http://127.0.0.1:{stack.router.http.port}"
    await stack.close()


def post(url: str, body: object, headers: dict | None = None) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


async def test_the_original_json_api(http_stack):
    _, base = http_stack
    status, body, _ = await asyncio.to_thread(
        post,
        f"{base}/api/v1/inference",
        {"model_id": "sim-fast", "prompt": "Hello", "priority": "high"},
    )
    assert status == 200
    assert body["generated_text"] and body["gpu_id"] == "cpu-0" and body["model_id"] == "sim-fast"
    assert body["inference_time_ms"] > 0 and body["request_id"]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"model_id": "sim-fast", "prompt": ""}, {}, 400),
        ({"model_id": "sim-fast", "prompt": "x", "priority": "urgent"}, {}, 400),
        ({"model_id": "nope", "prompt": "x"}, {}, 404),
        ({"model_id": "sim-fast", "prompt": "x", "max_tokens": "many"}, {}, 400),
        ({"model_id": "sim-fast", "prompt": "x"}, {"Authorization": "Bearer wrong"}, 401),
    ],
)
async def test_http_statuses_follow_the_grpc_codes(http_stack, body, headers, status):
    _, base = http_stack
    got, answer, _ = await asyncio.to_thread(post, f"{base}/api/v1/inference", body, headers)
    assert got == status and answer["error"]["message"]


async def test_over_the_limit_is_429_with_retry_after(http_stack):
    _, base = http_stack
    key = {"Authorization": "Bearer k-acme"}
    body = {"model_id": "sim-fast", "prompt": "x", "max_tokens": 1}
    assert (await asyncio.to_thread(post, f"{base}/api/v1/inference", body, key))[0] == 200
    status, answer, headers = await asyncio.to_thread(post, f"{base}/api/v1/inference", body, key)
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert answer["error"]["retry_after_ms"] > 0  # also where headers cannot go (SSE events)


async def test_the_openai_client_streams_a_chat_completion(http_stack):
    _, base = http_stack
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="k-ai", max_retries=0)

    def chat() -> tuple[str, list]:
        stream = client.chat.completions.create(
            model="sim-fast",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=12,
            stream=True,
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        return text, chunks

    text, chunks = await asyncio.to_thread(chat)
    assert len(chunks) >= 3 and len(text.split()) == 12
    assert chunks[-1].choices[0].finish_reason == "length"
    whole = await asyncio.to_thread(
        client.chat.completions.create,
        model="sim-fast",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=12,
    )
    assert whole.choices[0].message.content == text
    assert whole.usage.completion_tokens == 12


async def test_openai_completions_models_and_errors(http_stack):
    _, base = http_stack
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="k-ai", max_retries=0)
    listed = await asyncio.to_thread(client.models.list)
    assert {m.id for m in listed.data} == {"sim-fast", "sim-two"}
    done = await asyncio.to_thread(
        client.completions.create, model="sim-two", prompt="Once upon a time", max_tokens=5
    )
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 5
    with pytest.raises(openai.NotFoundError):
        await asyncio.to_thread(client.completions.create, model="gpt-17", prompt="x")
    with pytest.raises(openai.BadRequestError):
        await asyncio.to_thread(client.chat.completions.create, model="sim-fast", messages=[])


async def test_more_streams_than_one_connection_carries_all_succeed():
    """The door spreads its calls to the router over connections: past the public port's
    streams per connection, callers are not refused (UNAVAILABLE) for it."""
    models = [sim_model(slots=32, step_ms=20.0)]
    stack = await start_stack(models, router_overrides={"max_streams_per_connection": 4})
    url = f"http://127.0.0.1:{stack.router.http.port}/v1/chat/completions"
    body = {
        "model": "sim-fast",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 8,
        "stream": True,
    }

    async def one() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as reply:
            return reply.status, await reply.text()

    try:
        answers = await asyncio.gather(*(one() for _ in range(12)))
        assert [status for status, _ in answers] == [200] * 12
        assert all(text.endswith("data: [DONE]\n\n") for _, text in answers)
        assert stack.router.http._router.connections >= 3  # 12 calls, 4 on each
    finally:
        await stack.close()


async def test_a_caller_without_a_key_gets_401_before_its_body_is_read():
    key = hashlib.sha256(b"k-acme").hexdigest()
    stack = await start_stack(
        [sim_model()], tenants=[TenantSpec("acme", key)], allow_anonymous=False
    )
    base = f"http://127.0.0.1:{stack.router.http.port}"
    try:
        for body in (b"{not json", b"[1, 2]", json.dumps({"model": 5}).encode()):
            request = urllib.request.Request(
                f"{base}/v1/chat/completions", data=body, method="POST"
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
            assert refused.value.code == 401
            assert json.loads(refused.value.read())["error"]["code"] == "UNAUTHENTICATED"
        # with its key, the same bad body is the caller's mistake: 400
        status, _, _ = await asyncio.to_thread(
            post, f"{base}/v1/chat/completions", [1, 2], {"Authorization": "Bearer k-acme"}
        )
        assert status == 400
        health = await asyncio.to_thread(urllib.request.urlopen, f"{base}/health", timeout=10)
        assert health.status == 200  # probes need no key
    finally:
        await stack.close()


async def test_the_router_drains_both_doors_within_its_grace_period():
    """A stream still running when the router stops is cut at the grace period (not
    aiohttp's own 60 s), and the router says NOT_SERVING from the start of the drain."""
    models = [sim_model(step_ms=50.0)]
    stack = await start_stack(models, router_overrides={"shutdown_grace_s": 1.0})
    url = f"http://127.0.0.1:{stack.router.http.port}/v1/completions"
    body = {"model": "sim-fast", "prompt": "Hi", "max_tokens": 200, "stream": True}
    started, lines = asyncio.Event(), []

    async def stream() -> None:
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as reply:
            async for line in reply.content:
                lines.append(line.decode().strip())
                started.set()

    client = asyncio.ensure_future(stream())
    try:
        await asyncio.wait_for(started.wait(), 10)
        stopping = asyncio.ensure_future(stack.router.stop())
        await asyncio.sleep(0.2)
        health = await stack.router.grpc.health.Check(health_pb2.HealthCheckRequest(), None)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await asyncio.wait_for(stopping, 30)  # aiohttp's own drain would wait 60 s
        await asyncio.wait_for(client, 10)
        # cut at the grace period, with a final error event, before its 200 tokens (10 s)
        assert "event: error" in lines and "data: [DONE]" not in lines
    finally:
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)
        for worker in stack.workers:
            await worker.stop()
        await stack.scheduler.stop(0)
