"""inference.v1.Scheduler: converts protobuf and calls the coordinator. No tokens pass here.

`Acquire` answers with a signed lease; the router runs it on the worker. `Tickets` does the same
for many requests on one stream. `Schedule` and `Embed` serve routers of the previous release
by running the same lease path here (`LeasedRun`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

from services.common import leased_run, logs, tracing
from services.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from services.common.lease_token import LeaseSigner
from services.common.leased_run import LeasedRun
from services.common.prefix_blocks import MAX_TICKET_BLOCKS
from services.common.unreachable import MAX_UNREACHABLE
from services.scheduler import convert
from services.scheduler.coordinator import Coordinator, Grant
from services.scheduler.core.admission import Shed
from services.scheduler.metrics import SchedulerMetrics, priority_label
from services.scheduler.sessions import END_SESSION, Session
from services.scheduler.ticket_desk import TicketDesk

log = logging.getLogger(__name__)
TRACER = tracing.tracer("services.scheduler")


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        heartbeats: tuple[int, int],
        metrics: SchedulerMetrics,
        lease_signer: LeaseSigner,
        lease_start_s: float,
        compat: Callable[[Callable], LeasedRun],
    ) -> None:
        self._metrics = metrics
        self._coord = coordinator
        # the interval in ms, and how many of them an unchanged worker may let pass quietly
        self._heartbeat_interval_ms, self._quiet_heartbeats = heartbeats
        self._lease_signer = lease_signer
        self._lease_start_ms = int(lease_start_s * 1000)
        self._compat = compat(self._grant)
        self._desks: set[TicketDesk] = set()  # the open ticket streams

    async def Acquire(
        self, request: scheduler_pb2.AcquireRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.LeaseGrant:
        with tracing.server_span(
            "scheduler.Acquire", context.invocation_metadata(), **_attributes(request)
        ):
            return await self._grant(request, context.time_remaining())

    async def Tickets(
        self,
        request_iterator: AsyncIterator[scheduler_pb2.TicketBatch],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[scheduler_pb2.TicketAnswers]:
        """A router's Acquire calls on one stream (`TicketDesk`)."""
        desk = TicketDesk(self._grant, _attributes)
        self._desks.add(desk)
        try:
            async with contextlib.aclosing(desk.serve(request_iterator)) as answers:
                async for message in answers:
                    yield message
        finally:
            self._desks.discard(desk)

    def end_ticket_streams(self) -> None:
        """At shutdown: every ticket stream ends (its routers submit its tickets again)."""
        for desk in list(self._desks):
            desk.close()

    async def _grant(
        self, request: scheduler_pb2.AcquireRequest, timeout_s: float | None
    ) -> scheduler_pb2.LeaseGrant:
        grant = await self._acquire(request, timeout_s)
        start_by = int(time.time() * 1000) + self._lease_start_ms
        return convert.lease_grant(grant, request.request_id, self._lease_signer, start_by)

    async def _acquire(
        self, request: scheduler_pb2.AcquireRequest, timeout_s: float | None
    ) -> Grant:
        """Queues the request and waits for its lease, inside a queue_wait span."""
        if not request.request_id or not request.model_id:
            raise InvalidArgument("request_id and model_id are required")
        if len(request.prefix_blocks) > MAX_TICKET_BLOCKS:
            raise InvalidArgument(f"prefix_blocks: at most {MAX_TICKET_BLOCKS} block hashes")
        if len(request.unreachable_workers) > MAX_UNREACHABLE:
            raise InvalidArgument(f"unreachable_workers: at most {MAX_UNREACHABLE}")
        logs.request_id.set(request.request_id)
        ticket = convert.ticket(request)
        again = convert.resubmission(request)
        if again is not None and again.previous_lease_id:
            self._metrics.resumed(again.previous_outcome)
        with TRACER.start_as_current_span("scheduler.queue_wait") as span:
            try:
                grant = await self._coord.acquire(ticket, timeout_s, again)
            except (ResourceExhausted, DeadlineExceeded) as exc:
                reason = exc.reason if isinstance(exc, Shed) else "deadline"
                self._metrics.shed.labels(
                    request.tenant_id, priority_label(ticket.priority), reason
                ).inc()
                raise
            span.set_attribute("inference.queue_time_ms", grant.queue_time_ms)
            span.set_attribute("inference.lease", grant.lease.lease_id)
            if grant.request.model_id != request.model_id:
                span.set_attribute("inference.fallback_model", grant.request.model_id)
        self._metrics.queue_wait.labels(priority_label(ticket.priority)).observe(
            grant.queue_time_ms / 1000
        )
        return grant

    async def Schedule(
        self, request: scheduler_pb2.ScheduleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        """Deprecated: the lease path run here, for routers of the previous release."""
        req = request.request
        ticket = leased_run.generate_ticket(req, request.tenant_id, request.tenant_weight or 1.0)
        with tracing.server_span(
            "scheduler.Schedule", context.invocation_metadata(), **_attributes(ticket)
        ):
            stream = self._compat.generate(ticket, req, _deadline(context))
            async with contextlib.aclosing(stream) as messages:
                async for message in messages:
                    yield message

    async def Embed(
        self, request: scheduler_pb2.ScheduleEmbedRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.EmbedResponse:
        """Deprecated: the lease path run here, for routers of the previous release."""
        ticket = leased_run.embed_ticket(request.request, request.tenant_id)
        with tracing.server_span(
            "scheduler.Embed", context.invocation_metadata(), **_attributes(ticket)
        ):
            return await self._compat.embed(ticket, request.request, _deadline(context))

    async def WorkerSession(
        self,
        request_iterator: AsyncIterator[scheduler_pb2.WorkerSessionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[scheduler_pb2.WorkerSessionResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("registration"):
            raise InvalidArgument("a worker session must start with a registration")
        reg = first.registration
        if not reg.worker_id or not reg.address:
            raise InvalidArgument("registration needs worker_id and address")
        where = (reg.address, reg.device.gpu_id or "cpu-0")  # its address and GPU
        session = self._register(reg, where[1])
        reader = asyncio.create_task(self._read_session(session, request_iterator, where))
        try:
            yield scheduler_pb2.WorkerSessionResponse(
                accepted=scheduler_pb2.SessionAccepted(
                    heartbeat_interval_ms=self._heartbeat_interval_ms,
                    quiet_heartbeats=self._quiet_heartbeats,
                    batched_lease_ends=True,
                    lease_public_key=self._lease_signer.public_key,
                    scheduler_time_unix_ms=int(time.time() * 1000),
                    lease_start_timeout_ms=self._lease_start_ms,
                )
            )
            while (command := await session.outbox.get()) is not END_SESSION:
                yield command
        finally:
            reader.cancel()
            self._coord.close_session(session)

    def _register(self, reg: scheduler_pb2.WorkerRegistration, gpu_id: str) -> Session:
        now = self._coord.now()
        return self._coord.open_session(
            reg.worker_id,
            reg.address,
            gpu_id,
            [(convert.entry_from_proto(m.info), convert.slots_from_proto(m)) for m in reg.models],
            reg.device,
            loadable={m.info.model_id: m.memory_bytes for m in reg.loadable},
            memory_budget=reg.memory_budget_bytes,
            running=[convert.running_lease(c, reg.address, gpu_id, now) for c in reg.leases],
            caches=convert.cache_reports(reg.prefix_caches),
            ended=[convert.lease_end(e) for e in reg.ended],
        )

    async def _read_session(
        self,
        session: Session,
        request_iterator: AsyncIterator[scheduler_pb2.WorkerSessionRequest],
        where: tuple[str, str],
    ) -> None:
        """`where`: the worker's address and GPU, as it registered."""
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("message")
                if kind == "lease_ended":
                    self._lease_ended(session, message.lease_ended)
                elif kind == "lease_endings":
                    for ended in message.lease_endings.ended:
                        self._lease_ended(session, ended)
                elif kind == "lease_started":
                    self._lease_started(session, message.lease_started, where)
                elif kind == "heartbeat" and not self._heartbeat(session, message):
                    break
        except grpc.aio.AioRpcError:
            pass  # stream broke: the worker is gone
        except Exception:
            log.exception("worker %s: bad session message; ending its session", session.worker_id)
        finally:
            session.outbox.put_nowait(END_SESSION)

    def _lease_ended(self, session: Session, ended: scheduler_pb2.LeaseEnded) -> None:
        self._coord.lease_ended(session.worker_id, *convert.lease_end(ended))

    def _lease_started(
        self, session: Session, claims: types_pb2.LeaseClaims, where: tuple[str, str]
    ) -> None:
        """A lease its worker verified (signed with the fleet's lease key) and runs."""
        if claims.worker_id == session.worker_id:
            lease = convert.running_lease(claims, *where, self._coord.now())
            self._coord.lease_started(lease)

    def _heartbeat(self, session: Session, message: scheduler_pb2.WorkerSessionRequest) -> bool:
        beat = message.heartbeat
        return self._coord.heartbeat(
            session,
            convert.worker_state(beat),
            [convert.slots_from_proto(m) for m in beat.models],
            beat.device,
            beat.models,
            beat.lease_ids,
            convert.cache_reports(beat.prefix_caches),
        )

    async def ListModels(
        self, request: types_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.ListModelsResponse:
        return types_pb2.ListModelsResponse(
            models=[convert.model_info(view) for view in self._coord.models()]
        )

    async def GetStatus(
        self, request: types_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.GetStatusResponse:
        return convert.status(self._coord.snapshot(request.tenant_id))


def _deadline(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return time.monotonic() + (remaining if remaining is not None else 3600.0)


def _attributes(request: scheduler_pb2.AcquireRequest) -> dict[str, object]:
    return {
        "inference.model": request.model_id,
        "inference.priority": types_pb2.Priority.Name(convert.priority(request.priority)),
        "inference.tenant": request.tenant_id,
        "inference.request_id": request.request_id,
    }
