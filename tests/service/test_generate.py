"""Router → scheduler → worker over real aio servers, with the simulated engine."""

import asyncio

import grpc
import pytest
from inference.v1 import types_pb2

from tests.stack import request


async def collect(stub, req, **kwargs):
    return [m async for m in stub.Generate(req, **kwargs)]


async def test_generate_streams_deltas_then_one_summary(stack):
    stub = stack.router_stub()
    messages = await collect(stub, request(max_tokens=12, priority=types_pb2.PRIORITY_HIGH))
    deltas, summary = messages[:-1], messages[-1]
    assert len(deltas) >= 2
    assert all(m.HasField("delta") for m in deltas)
    assert summary.HasField("summary")
    s = summary.summary
    assert s.completion_tokens == 12 == sum(m.delta.token_count for m in deltas)
    assert s.finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert s.gpu_id == "cpu-0" and s.worker_id and s.model_id == "sim-fast"
    assert s.inference_time_ms > 0 and s.queue_time_ms >= 0
    assert len({m.request_id for m in messages}) == 1


async def test_infer_returns_the_same_text_as_the_stream(stack):
    stub = stack.router_stub()
    req = request(prompt="Same prompt", max_tokens=10, request_id="req-1")
    streamed = "".join(m.delta.text for m in await collect(stub, req) if m.HasField("delta"))
    answer = await stub.Infer(req)
    assert answer.generated_text == streamed and streamed
    assert answer.request_id == "req-1"
    assert answer.completion_tokens == 10 and answer.gpu_id == "cpu-0"
    assert answer.model_id == "sim-fast"


async def test_stop_strings_end_generation(stack):
    stub = stack.router_stub()
    first = await stub.Infer(request(max_tokens=30))
    word = first.generated_text.split()[3]
    stopped = await stub.Infer(
        request(max_tokens=30, sampling=types_pb2.SamplingParams(stop=[" " + word]))
    )
    assert stopped.finish_reason == types_pb2.FINISH_REASON_STOP
    assert first.generated_text.startswith(stopped.generated_text)
    assert f" {word}" not in stopped.generated_text


async def test_request_id_comes_back_in_initial_metadata(stack):
    call = stack.router_stub().Generate(request(request_id="trace-me"))
    metadata = dict(await call.initial_metadata())
    assert metadata["x-request-id"] == "trace-me"
    async for _ in call:
        pass


@pytest.mark.parametrize(
    ("req", "code"),
    [
        (request(model_id="no-such-model"), grpc.StatusCode.NOT_FOUND),
        (request(prompt=""), grpc.StatusCode.INVALID_ARGUMENT),
        (request(max_tokens=10**9), grpc.StatusCode.INVALID_ARGUMENT),
        (request(prompt="word " * 5000, max_tokens=256), grpc.StatusCode.INVALID_ARGUMENT),
        (request(priority=42), grpc.StatusCode.INVALID_ARGUMENT),
        (request(model_id=""), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_requests_get_their_status_code(stack, req, code):
    stub = stack.router_stub()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, req)
    assert info.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(req)
    assert info.value.code() == code


async def test_list_models_and_status(stack):
    stub = stack.router_stub()
    models = (await stub.ListModels(types_pb2.ListModelsRequest())).models
    [model] = models
    assert model.model_id == "sim-fast" and model.simulated and model.ready
    assert model.ready_workers == 1 and model.max_output_tokens == 256
    status = await stub.GetStatus(types_pb2.GetStatusRequest())
    assert [q.priority for q in status.queues] == [1, 2, 3]
    [worker] = status.workers
    assert worker.state == types_pb2.WORKER_STATE_READY
    assert worker.device.is_cpu and worker.device.memory_total_bytes > 0
    assert status.total_slots == 4 and status.active_leases == 0


async def test_engine_figures_reach_get_status_through_heartbeats(stack):
    stub = stack.router_stub()
    await stub.Infer(request(max_tokens=20))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        status = await stub.GetStatus(types_pb2.GetStatusRequest())
        [model] = status.workers[0].models
        if model.tokens_per_second > 0 or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert model.tokens_per_second > 0
    assert model.kv_cache_tokens_capacity == 1_000_000 and model.memory_bytes > 0
    assert model.state == types_pb2.MODEL_STATE_READY and model.max_slots == 4
