"""HTTP behaves like HTTP: a failure after a stream has started is a final SSE error event, a
client that goes away cancels its request and the work on the worker (streaming or not),
logged as one INFO line, and hostile bodies get a 4xx with a JSON error."""

import asyncio
import json
import logging

import aiohttp
import pytest

from tests.service.test_failures import kill_worker
from tests.service.test_scheduling import wait_until
from tests.stack import sim_model, start_stack

SLOW = sim_model("sim-slow", slots=2, step_ms=20.0)


@pytest.fixture
async def slow_http():
    stack = await start_stack([SLOW])
    yield stack, f"http://127.0.0.1:{stack.router.http.port}"
    await stack.close()


def chat(max_tokens: int, stream: bool) -> dict:
    return {
        "model": "sim-slow",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "tell me a long story"}],
    }


async def test_a_failure_mid_stream_ends_in_an_sse_error_event(slow_http):
    stack, base = slow_http
    url = f"{base}/v1/chat/completions"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=chat(200, True)) as response,
    ):
        assert response.status == 200
        await response.content.readline()  # the first chunk is out
        await kill_worker(stack.workers.pop())  # the only worker: nowhere to resume
        body = (await response.read()).decode()
    assert "event: error" in body
    event = json.loads(body.split("event: error\ndata: ", 1)[1].split("\n", 1)[0])
    assert event["error"]["code"] == "UNAVAILABLE"
    assert "HTTP/1.1" not in body  # no second status line inside the body


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_goes_away_stops_the_work(slow_http, stream, caplog):
    stack, base = slow_http
    engine = stack.workers[0].host.engines["sim-slow"]
    caplog.set_level(logging.INFO)
    session = aiohttp.ClientSession()
    request = asyncio.ensure_future(
        session.post(f"{base}/v1/chat/completions", json=chat(200, stream))
    )
    await wait_until(lambda: engine.active_sequences() == 1)
    request.cancel()
    await session.close()  # the connection goes away
    await wait_until(lambda: engine.active_sequences() == 0)
    core = stack.scheduler.coordinator.state
    await wait_until(lambda: core.active_leases() == 0)
    gone = [r for r in caplog.records if "client went away" in r.getMessage()]
    assert gone and all(r.levelno == logging.INFO for r in gone)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("path", "method", "body", "status"),
    [
        ("/v1/nowhere", "POST", "{}", 404),
        ("/v1/chat/completions", "GET", "", 405),
        (
            "/v1/completions",
            "POST",
            '{"model": "sim-slow", "prompt": "' + "x" * 600_000 + '"}',
            413,
        ),
        ("/v1/completions", "POST", "[" * 100_000 + "]" * 100_000, 400),
        ("/v1/completions", "POST", '{"model": "sim-slow", "prompt": "x", "n": 3}', 400),
        ("/v1/completions", "POST", '{"model": "sim-slow", "prompt": "x", "logprobs": 2}', 400),
    ],
)
async def test_hostile_http_gets_a_4xx_with_a_json_error(slow_http, path, method, body, status):
    _, base = slow_http
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{base}{path}", data=body) as response,
    ):
        assert response.status == status
        error = (await response.json())["error"]
        assert error["message"] and error["code"]
