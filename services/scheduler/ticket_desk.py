"""Scheduler.Tickets: one router's Acquire calls on one stream.

Each ticket waits for its lease as an Acquire call does (the same path: `grant`), and its
answer, a grant or the status Acquire would have ended with, joins the answers not yet sent:
the stream sends them together in its next message. So tickets that arrive together, and
answers decided together, cost a message between them rather than a call each. A withdrawn
ticket, and every ticket still waiting when the stream closes, leaves the queue as a cancelled
Acquire call does. A scheduler that stops closes its streams at once rather than at the end of
its grace period: a stream would take new tickets until then, where new calls are refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from inference.v1 import scheduler_pb2

from services.common import tracing
from services.common.errors import InvalidArgument
from services.common.status import refusal_for

log = logging.getLogger(__name__)
Grant = Callable[[scheduler_pb2.AcquireRequest, float | None], Awaitable[scheduler_pb2.LeaseGrant]]
Attributes = Callable[[scheduler_pb2.AcquireRequest], dict[str, object]]


class TicketDesk:
    """The tickets of one stream: those waiting, and the answers not sent yet."""

    def __init__(self, grant: Grant, attributes: Attributes) -> None:
        self._grant = grant
        self._attributes = attributes
        self._waiting: dict[int, asyncio.Task] = {}  # ticket number → its wait
        self._answers: list[scheduler_pb2.TicketAnswer] = []
        self._ready = asyncio.Event()  # answers to send, or the stream's end
        self._open = True
        self._refused: InvalidArgument | None = None  # why the stream ends with a status

    async def serve(
        self, tickets: AsyncIterator[scheduler_pb2.TicketBatch]
    ) -> AsyncIterator[scheduler_pb2.TicketAnswers]:
        """The stream's answers, in messages of those ready together, until the router's
        side closes."""
        reader = asyncio.create_task(self._read(tickets))
        try:
            while self._open or self._answers:
                await self._ready.wait()
                self._ready.clear()
                if self._answers:
                    ready, self._answers = self._answers, []
                    yield scheduler_pb2.TicketAnswers(answers=ready)
            if self._refused is not None:
                raise self._refused
        finally:
            reader.cancel()
            for wait in list(self._waiting.values()):
                wait.cancel()

    def close(self) -> None:
        """Ends the stream (the scheduler stops): the answers ready go, the waiting tickets
        are withdrawn here, and the router, its stream broken, submits them again."""
        self._open = False
        self._ready.set()

    async def _read(self, tickets: AsyncIterator[scheduler_pb2.TicketBatch]) -> None:
        try:
            async for batch in tickets:
                if not isinstance(batch, scheduler_pb2.TicketBatch):  # it did not parse
                    self._refused = InvalidArgument("malformed ticket batch: not a TicketBatch")
                    return
                for ticket in batch.tickets:
                    if ticket.number not in self._waiting:  # a number sent twice: once
                        self._waiting[ticket.number] = asyncio.create_task(self._answer(ticket))
                for number in batch.withdrawn:  # after: a ticket withdrawn in its own batch
                    wait = self._waiting.get(number)
                    if wait is not None:
                        wait.cancel()
        except grpc.aio.AioRpcError:
            pass  # the router's side broke: its tickets are withdrawn
        except Exception:
            log.exception("a ticket stream failed; ending it (its router submits again)")
        finally:
            self._open = False
            self._ready.set()

    async def _answer(self, ticket: scheduler_pb2.Ticket) -> None:
        request = ticket.request
        timeout_s = ticket.timeout_ms / 1000.0 if ticket.timeout_ms else None
        try:
            with tracing.server_span(
                "scheduler.Acquire", ticket.trace_context.items(), **self._attributes(request)
            ):
                grant = await self._grant(request, timeout_s)
            answer = scheduler_pb2.TicketAnswer(number=ticket.number, grant=grant)
        except asyncio.CancelledError:
            return  # withdrawn, or the stream closed: nobody to answer
        except Exception as exc:  # noqa: BLE001 - every refusal is an answer with its status
            code, details, retry_after_ms = refusal_for(exc)
            refusal = scheduler_pb2.TicketRefusal(
                code=code.value[0], message=details, retry_after_ms=retry_after_ms
            )
            answer = scheduler_pb2.TicketAnswer(number=ticket.number, refusal=refusal)
        finally:
            self._waiting.pop(ticket.number, None)
        self._answers.append(answer)
        self._ready.set()
