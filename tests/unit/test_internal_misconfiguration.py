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


class RefusingScheduler:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def Acquire(self, ticket, **call_options):  # the stub's method: timeout, metadata
        trailers = grpc.aio.Metadata((ORIGIN_KEY, self.code.name))
        raise grpc.aio.AioRpcError(
            self.code, grpc.aio.Metadata(), trailers, "internal service: wrong shared secret"
        )


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED]
)
def test_a_scheduler_that_refuses_the_router_is_unavailable_to_the_caller(code, caplog):
    client = SchedulerClient(RefusingScheduler(code), wait_s=5.0)
    ticket = scheduler_pb2.AcquireRequest(request_id="r", model_id="m")
    with caplog.at_level(logging.ERROR), pytest.raises(Unavailable) as refused:
        asyncio.run(client.acquire(ticket, 5.0))
    assert refused.value.retry_after_ms > 0 and "secret" not in refused.value.message
    assert any("fleet secret" in r.getMessage() for r in caplog.records)
