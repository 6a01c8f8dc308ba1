"""A fleet misconfiguration (the scheduler refuses this router: a rotated secret, a wrong
certificate) reaches the end user as UNAVAILABLE with a retry hint, the cause logged, never
as a 401 or 403 about an internal service (review finding 7)."""

import asyncio
import logging

import grpc
import pytest
from inference.v1 import scheduler_pb2

from services.common.errors import Unavailable
from services.common.status import ORIGIN_KEY
from services.router.scheduler_client import SchedulerClient


def refused(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata((ORIGIN_KEY, code.name))
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), trailers, "internal service: wrong shared secret"
    )


class RefusedStream:
    """A Tickets call the scheduler's interceptor refused: its status ends the stream."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def write(self, batch) -> None:
        await asyncio.sleep(0)

    def __aiter__(self):
        return self

    async def __anext__(self):
        raise refused(self.code)

    def cancel(self) -> bool:
        return False


class RefusingScheduler:
    """The stub's methods, each refused as an interceptor refuses a call."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def Acquire(self, ticket, **call_options):  # the stub's method: timeout, metadata
        raise refused(self.code)

    def Tickets(self, **call_options):
        return RefusedStream(self.code)


@pytest.mark.parametrize("ticket_stream", [True, False], ids=["ticket stream", "a call each"])
@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED]
)
def test_a_scheduler_that_refuses_the_router_is_unavailable_to_the_caller(
    code, ticket_stream, caplog
):
    client = SchedulerClient(RefusingScheduler(code), wait_s=5.0, ticket_stream=ticket_stream)
    ticket = scheduler_pb2.AcquireRequest(request_id="r", model_id="m")
    with caplog.at_level(logging.ERROR), pytest.raises(Unavailable) as refused:
        asyncio.run(client.acquire(ticket, 5.0))
    assert refused.value.retry_after_ms > 0 and "secret" not in refused.value.message
    assert any("fleet secret" in r.getMessage() for r in caplog.records)
