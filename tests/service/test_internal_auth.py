"""Scheduler and workers serve only callers that carry the fleet's shared secret."""

from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference.v1 import types_pb2, worker_pb2, worker_pb2_grpc

from services.common.internal_auth import SECRET_KEY, SecretCheckInterceptor
from tests.stack import request, start_stack

SECRET = "s3cret-fleet"


@pytest.fixture
async def locked_stack():
    stack = await start_stack(secret=SECRET)
    yield stack
    await stack.close()


async def test_the_fleet_works_with_its_secret(locked_stack):
    answer = await locked_stack.router_stub().Infer(request(max_tokens=3))
    assert answer.completion_tokens == 3


@pytest.mark.parametrize("metadata", [(), ((SECRET_KEY, "wrong"),)])
async def test_internal_services_refuse_calls_without_the_secret(locked_stack, metadata):
    scheduler = locked_stack.scheduler_stub()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scheduler.GetStatus(types_pb2.GetStatusRequest(), metadata=metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(f"127.0.0.1:{locked_stack.workers[0].port}") as channel:
        worker = worker_pb2_grpc.WorkerStub(channel)
        call = worker.Execute(
            worker_pb2.ExecuteRequest(lease_id="x", request=request()), metadata=metadata
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes stay open


async def test_a_worker_with_the_wrong_secret_cannot_join(locked_stack):
    await locked_stack.add_worker(
        [locked_stack.workers[0].host.engines["sim-fast"].spec],
        wait=False,
        internal_secret="not-it",
    )
    with pytest.raises(TimeoutError):
        await locked_stack.wait_workers(2, timeout_s=1.0)


async def test_a_caller_without_the_secret_is_refused_before_its_body_is_parsed(locked_stack):
    """A caller with the secret gets INVALID_ARGUMENT for bytes that are no protobuf; one
    without it gets UNAUTHENTICATED, and the handler that refuses it never parses the body."""
    target = f"127.0.0.1:{locked_stack.scheduler.port}"
    garbage = b"\xff" * 64
    async with grpc.aio.insecure_channel(target) as channel:
        raw = channel.unary_unary(
            "/inference.v1.Scheduler/GetStatus",
            request_serializer=lambda body: body,
            response_deserializer=lambda data: data,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw(garbage)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as parsed:
            await raw(garbage, metadata=((SECRET_KEY, SECRET),))
        assert parsed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    parses = []
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: None, request_deserializer=parses.append
    )
    details = SimpleNamespace(method="/inference.v1.Scheduler/GetStatus", invocation_metadata=())
    rewritten = SecretCheckInterceptor(SECRET).rewrite(handler, details)
    rewritten.request_deserializer(b"\x00" * 1024)
    assert parses == []
