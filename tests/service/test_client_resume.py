"""A client whose router died continues its stream through another router (issue 25,
item 2): the request goes again with what the client received (`GenerateRequest.resume`), the
model continues after it, and the client sees one stream with no token repeated or missing,
charged for what remains. The SDK does it by itself across a list of routers."""

import asyncio
import hashlib
import socket

import grpc
import pytest
from inference.v1 import router_pb2_grpc, types_pb2

from client import sdk
from client.sdk import InferenceClient
from services.common import status
from services.router.config import RouterConfig, TenantSpec
from services.router.ratelimit import Limits
from services.router.server import RouterServer
from tests.stack import LOOPBACK, request, sim_model, start_stack

MODEL = sim_model("sim-resume", slots=4, step_ms=20.0)
KEY = (("authorization", "Bearer key-resume"),)
FREE_KEY = (("authorization", "Bearer key-free"),)
TENANT = TenantSpec(
    "resumer",
    hashlib.sha256(b"key-resume").hexdigest(),
    limits=Limits(tokens_per_s=1, burst_tokens=60),
)
FREE = TenantSpec("free", hashlib.sha256(b"key-free").hexdigest())


@pytest.fixture
async def stack():
    running = await start_stack([MODEL], tenants=[TENANT, FREE], allow_anonymous=False)
    yield running
    await running.close()


async def second_router(stack) -> RouterServer:
    router = RouterServer(
        RouterConfig(
            listen=LOOPBACK,
            metrics_listen=LOOPBACK,
            http_listen=LOOPBACK,
            scheduler_address=stack.scheduler_address,
            model_refresh_s=0.0,
            tenants=(TENANT, FREE),
            allow_anonymous=False,
        )
    )
    await router.start()
    return router


def full_text(messages) -> str:
    return "".join(m.delta.text for m in messages if m.HasField("delta"))


async def test_a_resumed_request_continues_after_what_the_client_received(stack):
    stub = stack.router_stub()
    whole = [
        m async for m in stub.Generate(request(MODEL.model_id, max_tokens=24), metadata=FREE_KEY)
    ]
    first = whole[:8]  # what a client had when its router died
    received = types_pb2.ResumeState(
        generated_text=full_text(first), generated_tokens=sum(m.delta.token_count for m in first)
    )
    rest = [
        m
        async for m in stub.Generate(
            request(MODEL.model_id, max_tokens=24, resume=received), metadata=FREE_KEY
        )
    ]
    assert full_text(first) + full_text(rest) == full_text(whole)
    assert rest[-1].summary.completion_tokens == 24  # the summary counts every token


async def test_a_resumed_request_is_charged_for_what_remains(stack):
    """A burst of 60 tokens: a request of 100 resumed after 60 takes about 44 (its prompt,
    the text received, prefilled again, and the 40 left), so a request of 10 fits after it
    once, not twice. Charged whole (102), it would have left no room."""
    stub = stack.router_stub()
    rest = request(MODEL.model_id, max_tokens=100)
    rest.resume.generated_tokens, rest.resume.generated_text = 60, "received"
    assert (await stub.Infer(rest, metadata=KEY)).completion_tokens == 100
    await stub.Infer(request(MODEL.model_id, max_tokens=10), metadata=KEY)  # admitted
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Infer(request(MODEL.model_id, max_tokens=10), metadata=KEY)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("resume", "message"),
    [
        (types_pb2.ResumeState(generated_tokens=16), "leaves nothing to generate"),
        (types_pb2.ResumeState(generated_tokens=2, generated_text="y" * 33), "tokens can hold"),
        (types_pb2.ResumeState(generated_text="text without tokens"), "tokens can hold"),
    ],
)
async def test_a_resume_that_cannot_be_true_is_refused(stack, resume, message):
    req = request(MODEL.model_id, max_tokens=16, resume=resume)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.router_stub().Infer(req, metadata=FREE_KEY)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def unused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_the_sdk_skips_a_router_nobody_answers_at(stack):
    addresses = [unused_address(), stack.router_address]
    with InferenceClient(addresses, api_key="key-free", timeout_s=10) as client:
        text = await asyncio.to_thread(lambda: "".join(client.stream(MODEL.model_id, "Hi")))
        assert text and client.moves == 1
        req = request(MODEL.model_id, max_tokens=0)
        with pytest.raises(grpc.RpcError) as info:  # a router's own answer does not move
            await asyncio.to_thread(client.infer, types_pb2.GenerateRequest(prompt="no model"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and client.moves == 1
        assert req.model_id


async def test_the_sdk_continues_a_stream_through_another_router_when_its_router_stops(stack):
    other = await second_router(stack)
    expected = full_text(
        [
            m
            async for m in stack.router_stub().Generate(
                request(MODEL.model_id, max_tokens=40), metadata=FREE_KEY
            )
        ]
    )
    addresses = [stack.router_address, f"127.0.0.1:{other.port}"]
    loop = asyncio.get_running_loop()
    got_some = asyncio.Event()
    try:
        with InferenceClient(addresses, api_key="key-free", timeout_s=20) as client:

            def consume() -> list[types_pb2.GenerateResponse]:
                out = []
                for message in client.generate(request(MODEL.model_id, max_tokens=40)):
                    out.append(message)
                    if len(out) == 5:
                        loop.call_soon_threadsafe(got_some.set)
                return out

            reading = asyncio.create_task(asyncio.to_thread(consume))
            await asyncio.wait_for(got_some.wait(), 10)
            await stack.router.grpc.server.stop(0)  # its streams are cut, not answered
            messages = await asyncio.wait_for(reading, 20)
        assert client.moves == 1
        assert full_text(messages) == expected  # nothing repeated, nothing missing
        summary = messages[-1].summary
        assert summary.completion_tokens == 40
        assert sum(m.delta.token_count for m in messages if m.HasField("delta")) == 40
    finally:
        await other.stop(0)


class _DiesAfterTheLastToken(router_pb2_grpc.RouterServicer):
    """A router that streams every token, then is cut off before its summary."""

    def __init__(self) -> None:
        self.calls = 0

    async def Generate(self, request, context):
        self.calls += 1
        for word in ("one ", "two ", "three"):
            yield types_pb2.GenerateResponse(delta=types_pb2.TokenDelta(text=word, token_count=1))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")


async def test_the_sdk_ends_a_stream_whose_router_died_after_its_last_token():
    server = grpc.aio.server()
    servicer = _DiesAfterTheLastToken()
    router_pb2_grpc.add_RouterServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with InferenceClient(f"127.0.0.1:{port}", timeout_s=10) as client:
            req = request("m", max_tokens=3)
            messages = await asyncio.to_thread(lambda: list(client.generate(req)))
        assert full_text(messages) == "one two three"
        summary = messages[-1].summary
        assert summary.completion_tokens == 3
        assert summary.finish_reason == types_pb2.FINISH_REASON_LENGTH
        assert servicer.calls == 1  # nothing left to ask another router for
    finally:
        await server.stop(0)


def test_the_sdk_knows_a_routers_answer_by_the_trailer_the_services_send():
    """The SDK stands alone (stubs only), so it names the trailer itself: the same one."""
    assert sdk.ORIGIN_KEY == status.ORIGIN_KEY
