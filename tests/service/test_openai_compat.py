"""The OpenAI-compatible door with the official `openai` client: usage in the stream (equal
to the tokens streamed), the vLLM fields benchmark tools send, clear 400s for what is not
supported, the error body the client parses, and health endpoints."""

import aiohttp
import openai
import pytest

from tests.stack import sim_model, start_stack


@pytest.fixture
async def door():
    stack = await start_stack([sim_model()])
    base = f"http://127.0.0.1:{stack.router.http.port}"
    client = openai.AsyncOpenAI(
        base_url=f"{base}/v1", api_key="-", max_retries=0, default_headers={"Authorization": ""}
    )
    yield stack, base, client
    await client.close()
    await stack.close()


MESSAGES = [{"role": "user", "content": "Hello there"}]


async def test_streamed_usage_equals_the_tokens_streamed(door):
    _, _, client = door
    stream = await client.chat.completions.create(
        model="sim-fast",
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == 12
    assert len(text.split()) == 12  # the simulated model streams one word per token
    running = [c.usage.completion_tokens for c in chunks[:-1] if c.usage]
    assert running == sorted(running) and running[-1] == 12  # continuous usage stats
    assert final.usage.prompt_tokens == chunks[0].usage.prompt_tokens > 0


async def test_completions_take_the_fields_benchmark_clients_send(door):
    _, _, client = door
    answer = await client.completions.create(
        model="sim-fast",
        prompt="Once upon a time",
        max_tokens=8,
        seed=7,
        stop=["zzz"],
        user="someone",
        extra_body={"ignore_eos": True, "min_tokens": 4},
    )
    assert answer.usage.completion_tokens == 8 and answer.choices[0].finish_reason == "length"
    listed = await client.completions.create(
        model="sim-fast", prompt="Once upon a time", max_tokens=8, stop="the"
    )
    assert listed.choices[0].text  # stop as a single string


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 2}, "n must be 1"),
        ({"logprobs": True}, "logprobs"),
        ({"extra_body": {"min_tokens": 99}}, "min_tokens"),
        ({"extra_body": {"ignore_eos": "yes"}}, "ignore_eos"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "text"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts"),
    ],
)
async def test_what_is_not_supported_is_a_clear_400(door, fields, message):
    _, _, client = door
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            **{"model": "sim-fast", "messages": MESSAGES, "max_tokens": 8, **fields}
        )
    assert message in info.value.message
    assert info.value.body["code"] == "INVALID_ARGUMENT"


async def test_errors_have_the_shape_the_client_parses(door):
    _, _, client = door
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert "unknown model" in info.value.message


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_health_and_readiness(door):
    _, base, _ = door
    assert await get(f"{base}/health") == (200, {"status": "ok"})
    status, body = await get(f"{base}/health/ready")
    assert status == 200 and body["models"] == ["sim-fast"]


async def test_readiness_is_503_while_no_model_is_ready():
    stack = await start_stack([sim_model()], workers=0)
    try:
        base = f"http://127.0.0.1:{stack.router.http.port}"
        assert (await get(f"{base}/health"))[0] == 200  # the process serves
        status, body = await get(f"{base}/health/ready")
        assert status == 503 and body["error"]["code"] == "UNAVAILABLE"
    finally:
        await stack.close()
