"""inference.v1.Scheduler: a thin layer over the coordinator and the worker relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2, worker_pb2, worker_pb2_grpc

from services.common import logs, tracing
from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.scheduler import convert
from services.scheduler.coordinator import END_SESSION, Coordinator, Grant, Session
from services.scheduler.core.types import Lease
from services.scheduler.metrics import SchedulerMetrics, priority_label
from services.scheduler.worker_pool import WorkerChannels

log = logging.getLogger(__name__)
TRACER = tracing.tracer("services.scheduler")

# Codes a worker may answer with that belong to the request, not to the worker's health.
_REQUEST_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        workers: WorkerChannels,
        heartbeat_interval_ms: int,
        metrics: SchedulerMetrics,
    ) -> None:
        self._metrics = metrics
        self._coord = coordinator
        self._workers = workers
        self._heartbeat_interval_ms = heartbeat_interval_ms

    async def Schedule(
        self, request: scheduler_pb2.ScheduleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        req = request.request
        with tracing.server_span(
            "scheduler.Schedule", context.invocation_metadata(), **_attributes(request)
        ):
            grant = await self._acquire(req, request.tenant_id, context)
            lease = grant.lease
            execute = worker_pb2.ExecuteRequest(
                lease_id=lease.lease_id, request=req, tenant_id=request.tenant_id
            )
            with self._dispatch(
                lease,
                lambda stub, metadata: stub.Execute(
                    execute, timeout=context.time_remaining(), metadata=metadata
                ),
            ) as call:
                async for message in call:
                    if message.HasField("summary"):
                        self._metrics.served_request(
                            request.tenant_id, message.summary.completion_tokens
                        )
                        message.summary.queue_time_ms = grant.queue_time_ms
                        message.summary.gpu_id = message.summary.gpu_id or lease.gpu_id
                    yield message

    async def Embed(
        self, request: scheduler_pb2.ScheduleEmbedRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.EmbedResponse:
        req = request.request
        with tracing.server_span(
            "scheduler.Embed", context.invocation_metadata(), **_attributes(request)
        ):
            grant = await self._acquire(req, request.tenant_id, context)
            lease = grant.lease
            embed = worker_pb2.ExecuteEmbedRequest(
                lease_id=lease.lease_id, request=req, tenant_id=request.tenant_id
            )
            with self._dispatch(
                lease,
                lambda stub, metadata: stub.Embed(
                    embed, timeout=context.time_remaining(), metadata=metadata
                ),
            ) as call:
                response = await call
            response.queue_time_ms = grant.queue_time_ms
            return response

    @contextlib.contextmanager
    def _dispatch(
        self, lease: Lease, start: Callable[[worker_pb2_grpc.WorkerStub, tuple], Any]
    ) -> Iterator[Any]:
        """Starts the leased call on its worker (inside a dispatch span) and owns the lease
        until the call ends: a worker failure becomes UNAVAILABLE (or the request's own code),
        a reclaimed lease ends the call, and the lease is released exactly once."""
        with TRACER.start_as_current_span("scheduler.dispatch", attributes=_lease(lease)):
            call = start(self._workers.stub(lease.worker_address), tracing.outgoing_metadata())
            self._coord.on_revoke(lease.lease_id, call.cancel)
            try:
                yield call
            except grpc.aio.AioRpcError as exc:
                raise _worker_failure(exc, lease.worker_id) from None
            except asyncio.CancelledError:
                self._raise_if_revoked(lease)
                raise
            finally:
                call.cancel()
                self._coord.release(lease.lease_id)

    async def _acquire(self, req, tenant_id: str, context: grpc.aio.ServicerContext) -> Grant:
        """Queues the request and waits for its lease, inside a queue_wait span."""
        if not req.request_id or not req.model_id:
            raise InvalidArgument("request_id and model_id are required")
        logs.request_id.set(req.request_id)
        priority = convert.priority(req.priority)
        with TRACER.start_as_current_span("scheduler.queue_wait") as span:
            try:
                grant = await self._coord.acquire(
                    req.request_id, req.model_id, priority, tenant_id, context.time_remaining()
                )
            except ResourceExhausted:
                self._metrics.shed.labels(tenant_id, priority_label(priority), "queue_full").inc()
                raise
            span.set_attribute("inference.queue_time_ms", grant.queue_time_ms)
        self._metrics.queue_wait.labels(priority_label(priority)).observe(
            grant.queue_time_ms / 1000
        )
        return grant

    def _raise_if_revoked(self, lease: Lease) -> None:
        """A relay cancelled because its worker died ends in UNAVAILABLE, not CANCELLED."""
        if lease.lease_id in self._coord.revoked and not _task_cancelled():
            raise Unavailable(f"worker {lease.worker_id} died during the request") from None

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
        models = [
            (convert.entry_from_proto(m.info), convert.slots_from_proto(m)) for m in reg.models
        ]
        session = self._coord.open_session(
            reg.worker_id, reg.address, reg.device.gpu_id or "cpu-0", models, reg.device
        )
        reader = asyncio.create_task(self._read_heartbeats(session, request_iterator))
        try:
            yield scheduler_pb2.WorkerSessionResponse(
                accepted=scheduler_pb2.SessionAccepted(
                    heartbeat_interval_ms=self._heartbeat_interval_ms
                )
            )
            while (command := await session.outbox.get()) is not END_SESSION:
                yield command
        finally:
            reader.cancel()
            self._coord.close_session(session)

    async def _read_heartbeats(
        self, session: Session, request_iterator: AsyncIterator[scheduler_pb2.WorkerSessionRequest]
    ) -> None:
        try:
            async for message in request_iterator:
                if not message.HasField("heartbeat"):
                    continue
                beat = message.heartbeat
                models = [convert.slots_from_proto(m) for m in beat.models]
                state = convert.worker_state(beat)
                if not self._coord.heartbeat(session, state, models, beat.device, beat.models):
                    break
        except grpc.aio.AioRpcError:
            pass  # stream broke: the worker is gone
        finally:
            session.outbox.put_nowait(END_SESSION)

    async def ListModels(
        self, request: types_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.ListModelsResponse:
        return types_pb2.ListModelsResponse(
            models=[convert.model_info(view) for view in self._coord.core.models()]
        )

    async def GetStatus(
        self, request: types_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.GetStatusResponse:
        core = self._coord.core
        now = core.clock()
        workers = []
        for record in core.workers():
            session = self._coord.session(record.worker_id)
            workers.append(convert.worker_status(record, session, now))
        return types_pb2.GetStatusResponse(
            queues=convert.queue_depths(core.queue_depths()),
            workers=workers,
            active_leases=core.active_leases(),
            total_slots=core.total_slots(),
        )


def _worker_failure(exc: grpc.aio.AioRpcError, worker_id: str) -> Exception:
    if exc.code() in _REQUEST_CODES:
        return exc  # relayed unchanged by the error interceptor
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("deadline passed while generating")
    log.warning("worker %s failed a request: %s %s", worker_id, exc.code(), exc.details())
    return Unavailable(f"worker {worker_id} failed during the request")


def _task_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _attributes(request) -> dict[str, object]:
    req = request.request
    return {
        "inference.model": req.model_id,
        "inference.priority": types_pb2.Priority.Name(convert.priority(req.priority)),
        "inference.tenant": request.tenant_id,
        "inference.request_id": req.request_id,
    }


def _lease(lease: Lease) -> dict[str, str]:
    return {
        "inference.lease": lease.lease_id,
        "inference.worker": lease.worker_id,
        "inference.gpu_id": lease.gpu_id,
    }
