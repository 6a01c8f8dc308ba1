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
import math
import time

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

from services.common import tracing
from services.common.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from services.common.status import answered
from services.router.ticket_stream import TicketStream

log = logging.getLogger(__name__)

RETRY_DELAY_S = (0.05, 0.5)  # first and longest pause between resubmissions
RETRY_AFTER_MS = 2000  # a scheduler that restarts is back in about this long
WAITING_RETRY_AFTER_MS = 1000  # when this router's waiting calls are at their cap
HIGH_RESERVE = 0.1  # of the cap on waiting calls, kept for high-priority requests


class SchedulerClient:
    def __init__(
        self,
        stub: scheduler_pb2_grpc.SchedulerStub,
        wait_s: float,
        max_waiting: int = 1000,
        ticket_stream: bool = True,
    ) -> None:
        self.stub = stub
        # Acquire on one stream (Scheduler.Tickets); a call each if the scheduler has none
        self._tickets = TicketStream(stub) if ticket_stream else None
        self._wait_s = wait_s
        self._max_waiting = max_waiting
        self._waiting = 0  # Acquire calls this router has open now

    async def acquire(
        self, ticket: scheduler_pb2.AcquireRequest, timeout_s: float
    ) -> scheduler_pb2.LeaseGrant:
        """Scheduler.Acquire, submitted again whenever the scheduler cannot be reached.
        Raises ResourceExhausted when `max_waiting` calls wait already (gRPC would cancel
        some of the calls of a server holding too many: bench.grpc_waiting_calls)."""
        if self._waiting >= self._limit(ticket.priority):
            raise ResourceExhausted(
                f"{self._waiting} requests are waiting for a lease already; retry later",
                WAITING_RETRY_AFTER_MS,
            )
        self._waiting += 1
        try:
            return await self._acquire(ticket, timeout_s)
        finally:
            self._waiting -= 1

    def _limit(self, priority: int) -> int:
        """High-priority requests may use the whole cap; the others leave a share of it."""
        if priority == types_pb2.PRIORITY_HIGH:
            return self._max_waiting
        return max(1, self._max_waiting - math.ceil(self._max_waiting * HIGH_RESERVE))

    async def _acquire(
        self, ticket: scheduler_pb2.AcquireRequest, timeout_s: float
    ) -> scheduler_pb2.LeaseGrant:
        started = time.monotonic()
        base_ms = ticket.resubmission.waited_ms if ticket.HasField("resubmission") else 0.0
        delay = RETRY_DELAY_S[0]
        while True:
            elapsed = time.monotonic() - started
            try:
                return await self._ask(ticket, max(0.001, timeout_s - elapsed))
            except grpc.aio.AioRpcError as exc:
                if exc.code() in MISCONFIGURED:
                    raise misconfigured(exc) from None
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

    async def _ask(
        self, ticket: scheduler_pb2.AcquireRequest, timeout_s: float
    ) -> scheduler_pb2.LeaseGrant:
        """One Acquire: on the ticket stream, or a call of its own."""
        if self._tickets is not None and self._tickets.supported:
            try:
                return await self._tickets.acquire(ticket, timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise  # UNIMPLEMENTED: the previous release; this one goes as a call
        return await self.stub.Acquire(
            ticket, timeout=timeout_s, metadata=tracing.outgoing_metadata()
        )

    async def close(self) -> None:
        if self._tickets is not None:
            await self._tickets.close()


def _reached(exc: grpc.aio.AioRpcError) -> bool:
    """The scheduler answered (any status of its own), or the call ended for a reason that
    retrying would not fix; False when the scheduler could not be reached."""
    if answered(exc):
        return True
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise DeadlineExceeded("deadline passed while waiting for a lease") from None
    return exc.code() != grpc.StatusCode.UNAVAILABLE


# what a scheduler answers a router it does not trust (a rotated secret, a wrong certificate)
MISCONFIGURED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def misconfigured(exc: grpc.aio.AioRpcError) -> Unavailable:
    """The fleet's own misconfiguration is not the caller's to fix: UNAVAILABLE to it (with
    a retry hint), the cause in this router's log for the operator."""
    log.error(
        "the scheduler refused this router (%s: %s): check the fleet secret and certificates",
        exc.code().name,
        exc.details(),
    )
    return Unavailable(
        "the service is unavailable (internal configuration); retry later", RETRY_AFTER_MS
    )


def unreachable(exc: grpc.aio.AioRpcError) -> Unavailable:
    """UNAVAILABLE with a retry hint: the scheduler could not be reached in time."""
    return Unavailable(f"scheduler unavailable ({exc.code().name}); retry later", RETRY_AFTER_MS)
