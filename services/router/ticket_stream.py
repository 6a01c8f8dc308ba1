"""A router's requests' Acquire calls to one scheduler, on one stream (Scheduler.Tickets).

Tickets queued while the stream writes go together in its next message, and the scheduler
answers those decided together in one: under load a request costs both ends a share of a
message where a call of its own would cost each a call. A request whose caller leaves, or whose
deadline passes here first, is withdrawn. When the stream breaks, every ticket on it fails with
the stream's status, as each call would have (the router submits them again, on a new stream);
a scheduler of the previous release answers UNIMPLEMENTED, and `supported` turns False for a
minute (then the stream is tried again: the scheduler may have been upgraded since).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common import tracing
from services.common.errors import DeadlineExceeded
from services.common.status import error_for

log = logging.getLogger(__name__)
RETRY_STREAM_S = 60.0  # after UNIMPLEMENTED, calls for this long, then the stream again


class _Stream:
    """One open Tickets call: the tickets waiting on it and the messages not written yet."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call
        self.waiting: dict[int, asyncio.Future[scheduler_pb2.TicketAnswer]] = {}
        self.tickets: list[scheduler_pb2.Ticket] = []
        self.withdrawn: list[int] = []
        self.to_write = asyncio.Event()
        self.broken: grpc.aio.AioRpcError | None = None
        self.task = asyncio.create_task(self._run())

    def send(self, ticket: scheduler_pb2.Ticket) -> asyncio.Future[scheduler_pb2.TicketAnswer]:
        future = asyncio.get_running_loop().create_future()
        self.waiting[ticket.number] = future
        self.tickets.append(ticket)
        self.to_write.set()
        return future

    def withdraw(self, number: int) -> None:
        """The ticket's caller gave up: a ticket not written yet is not sent; one written is
        withdrawn at the scheduler."""
        if self.waiting.pop(number, None) is None or self.broken is not None:
            return
        unsent = [t for t in self.tickets if t.number != number]
        if len(unsent) < len(self.tickets):
            self.tickets = unsent
        else:
            self.withdrawn.append(number)
            self.to_write.set()

    async def _run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            async for message in self.call:
                for answer in message.answers:
                    future = self.waiting.pop(answer.number, None)
                    if future is not None and not future.done():
                        future.set_result(answer)
            self.broken = _ended("the scheduler ended the ticket stream")
        except grpc.aio.AioRpcError as exc:
            self.broken = exc
        except asyncio.CancelledError:
            self.broken = _ended("the router closed the ticket stream")
            raise
        except Exception:
            log.exception("reading the ticket stream failed; its tickets are submitted again")
            self.broken = _ended("the router could not read the ticket stream")
        finally:
            writer.cancel()
            self.call.cancel()
            self._fail_all()

    def _fail_all(self) -> None:
        assert self.broken is not None
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(self.broken)
        self.waiting.clear()

    async def _write(self) -> None:
        """Writes what is queued, together, whenever the last write is done. A stream that
        ended is the reader's to report; any other failure cancels the call, so that the
        reader fails its tickets and the router submits them again."""
        try:
            while True:
                await self.to_write.wait()
                self.to_write.clear()
                batch = scheduler_pb2.TicketBatch(tickets=self.tickets, withdrawn=self.withdrawn)
                self.tickets, self.withdrawn = [], []
                await self.call.write(batch)
        except (grpc.aio.UsageError, grpc.aio.AioRpcError):
            pass
        except Exception:
            log.exception("writing to the ticket stream failed; its tickets are submitted again")
            self.call.cancel()


class TicketStream:
    """Acquire over the router's one stream to a scheduler, opened when a request needs it."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub) -> None:
        self._stub = stub
        self._stream: _Stream | None = None
        self._numbers = itertools.count(1)
        self._unsupported_until = 0.0  # monotonic: the scheduler answered UNIMPLEMENTED

    @property
    def supported(self) -> bool:
        """False for a while after the scheduler showed it has no Tickets (the previous
        release); then the stream is tried again, for a scheduler upgraded since."""
        return time.monotonic() >= self._unsupported_until

    async def acquire(
        self, request: scheduler_pb2.AcquireRequest, timeout_s: float
    ) -> scheduler_pb2.LeaseGrant:
        """As Scheduler.Acquire: the grant, or the scheduler's refusal raised as the error it
        stands for; grpc.aio.AioRpcError when the stream broke with the ticket on it."""
        stream = self._open()
        ticket = scheduler_pb2.Ticket(
            number=next(self._numbers),
            request=request,
            timeout_ms=max(1, int(timeout_s * 1000)),
            trace_context=dict(tracing.outgoing_metadata()),
        )
        try:
            answer = await asyncio.wait_for(stream.send(ticket), timeout_s)
        except TimeoutError:
            stream.withdraw(ticket.number)
            raise DeadlineExceeded("deadline passed while waiting for a lease") from None
        except asyncio.CancelledError:
            stream.withdraw(ticket.number)
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED and self.supported:
                log.info("the scheduler has no ticket stream; acquiring with a call each")
                self._unsupported_until = time.monotonic() + RETRY_STREAM_S
            raise
        if answer.HasField("grant"):
            return answer.grant
        refusal = answer.refusal
        raise error_for(refusal.code, refusal.message, refusal.retry_after_ms)

    def _open(self) -> _Stream:
        if self._stream is None or self._stream.broken is not None:
            self._stream = _Stream(self._stub.Tickets())
        return self._stream

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream.task


def _ended(details: str) -> grpc.aio.AioRpcError:
    """A stream that ended without a status of its own: as a call cut on the way."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details
    )
