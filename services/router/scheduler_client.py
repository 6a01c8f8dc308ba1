"""The router's calls to the scheduler, and what it does while the scheduler is away.

A request waiting for a lease when the scheduler goes away (crash, restart, network) is not
failed: the router submits it again, with the time it has waited so it keeps its place in
arrival order, once a scheduler answers, for as long as `scheduler_wait_s` and the request's
deadline allow. Only then does the caller see UNAVAILABLE (with a retry hint). Statuses the
scheduler itself answers (shed, no worker for the model, ...) are passed on as they are.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common import tracing
from services.common.errors import DeadlineExceeded, Unavailable
from services.common.status import answered

log = logging.getLogger(__name__)

RETRY_DELAY_S = (0.05, 0.5)  # first and longest pause between resubmissions
RETRY_AFTER_MS = 2000  # a scheduler that restarts is back in about this long


class SchedulerClient:
    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub, wait_s: float) -> None:
        self.stub = stub
        self._wait_s = wait_s

    async def acquire(
        self, ticket: scheduler_pb2.AcquireRequest, timeout_s: float
    ) -> scheduler_pb2.LeaseGrant:
        """Scheduler.Acquire, submitted again whenever the scheduler cannot be reached."""
        started = time.monotonic()
        base_ms = ticket.resubmission.waited_ms if ticket.HasField("resubmission") else 0.0
        delay = RETRY_DELAY_S[0]
        while True:
            elapsed = time.monotonic() - started
            try:
                return await self.stub.Acquire(
                    ticket,
                    timeout=max(0.001, timeout_s - elapsed),
                    metadata=tracing.outgoing_metadata(),
                )
            except grpc.aio.AioRpcError as exc:
                if _reached(exc):
                    raise
                elapsed = time.monotonic() - started
                if elapsed + delay >= min(self._wait_s, timeout_s):
                    raise unreachable(exc) from None
                if delay == RETRY_DELAY_S[0]:
                    log.info("scheduler unreachable (%s); resubmitting", exc.code().name)
            await asyncio.sleep(delay)
            delay = min(RETRY_DELAY_S[1], delay * 2)
            ticket.resubmission.waited_ms = base_ms + (time.monotonic() - started) * 1000.0


def _reached(exc: grpc.aio.AioRpcError) -> bool:
    """The scheduler answered (any status of its own), or the call ended for a reason that
    retrying would not fix; False when the scheduler could not be reached."""
    if answered(exc):
        return True
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise DeadlineExceeded("deadline passed while waiting for a lease") from None
    return exc.code() != grpc.StatusCode.UNAVAILABLE


def unreachable(exc: grpc.aio.AioRpcError) -> Unavailable:
    """UNAVAILABLE with a retry hint: the scheduler could not be reached in time."""
    return Unavailable(f"scheduler unavailable ({exc.code().name}); retry later", RETRY_AFTER_MS)
