"""inference.v1.Scheduler: a thin layer over the coordinator and the worker relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
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
from services.common.tokens import estimate_tokens
from services.scheduler import convert
from services.scheduler.coordinator import END_SESSION, WORKER_LOST, Coordinator, Grant, Session
from services.scheduler.core.admission import Shed
from services.scheduler.core.types import Lease
from services.scheduler.metrics import SchedulerMetrics, priority_label
from services.scheduler.relay import LeaseLost, Progress
from services.scheduler.worker_pool import WorkerChannels

log = logging.getLogger(__name__)
TRACER = tracing.tracer("services.scheduler")

# Codes a worker may answer with that belong to the request, not to the worker's health.
_REQUEST_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
AFFINITY_CHARS = 256  # prefix-affinity placement hashes about the first 64 tokens


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        workers: WorkerChannels,
        heartbeat_interval_ms: int,
        metrics: SchedulerMetrics,
        max_resumes: int = 3,
    ) -> None:
        self._metrics = metrics
        self._coord = coordinator
        self._workers = workers
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._max_resumes = max_resumes

    async def Schedule(
        self, request: scheduler_pb2.ScheduleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        req = request.request
        with tracing.server_span(
            "scheduler.Schedule", context.invocation_metadata(), **_attributes(request)
        ):
            entry = self._coord.core.model(req.model_id) if req.model_id else None
            grant = await self._acquire(
                req,
                request.tenant_id,
                context,
                prompt_tokens=estimate_tokens(req.prompt),
                max_tokens=req.max_tokens or (entry.default_max_tokens if entry else 0),
                tenant_weight=request.tenant_weight or 1.0,
                affinity_key=req.prompt[:AFFINITY_CHARS],
                allow_fallback=req.allow_fallback,
            )
            progress = Progress()
            while True:
                try:
                    attempt = self._stream(grant, progress, request, context)
                    async with contextlib.aclosing(attempt) as stream:
                        async for message in stream:
                            yield message
                    return
                except LeaseLost as lost:
                    grant = await self._resume(grant, progress, lost, context)

    async def _stream(
        self,
        grant: Grant,
        progress: Progress,
        request: scheduler_pb2.ScheduleRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        """One attempt: the leased worker's stream, continuing after what was already sent."""
        lease, admitted = grant.lease, grant.request
        req = types_pb2.GenerateRequest()
        req.CopyFrom(request.request)
        req.model_id, req.max_tokens = admitted.model_id, admitted.max_tokens
        progress.attempts += 1
        execute = worker_pb2.ExecuteRequest(
            lease_id=lease.lease_id,
            request=req,
            tenant_id=request.tenant_id,
            resume=progress.resume_state(),
        )
        tokens_before = progress.tokens
        with self._dispatch(
            lease,
            lambda stub, metadata: stub.Execute(
                execute, timeout=context.time_remaining(), metadata=metadata
            ),
        ) as (call, finished):
            async for message in call:
                if message.HasField("summary"):
                    summary = message.summary
                    self._coord.observe_latency(lease.worker_id, summary.time_to_first_token_ms)
                    self._metrics.served_request(
                        request.tenant_id, summary.completion_tokens + tokens_before
                    )
                    summary.queue_time_ms = grant.queue_time_ms
                    summary.gpu_id = summary.gpu_id or lease.gpu_id
                    finished.append(True)
                progress.record(message, tokens_before)
                yield message

    async def _resume(self, grant: Grant, progress: Progress, lost: LeaseLost, context) -> Grant:
        """Queues a request whose lease ended early again; UNAVAILABLE past max_resumes."""
        self._metrics.lease_lost.labels(lost.reason).inc()
        if progress.attempts > self._max_resumes:
            raise Unavailable(
                f"the request lost its worker {progress.attempts} times; giving up"
            ) from None
        log.info(
            "request %s lost its lease (%s); resuming after %d tokens",
            grant.request.request_id,
            lost.reason,
            progress.tokens,
        )
        with TRACER.start_as_current_span(
            "scheduler.requeue",
            attributes={
                "inference.reason": lost.reason,
                "inference.resume_tokens": progress.tokens,
            },
        ):
            pending = grant.request
            if lost.reason == WORKER_LOST:
                self._coord.core.worker_failed(lost.worker_id)
                pending = replace(pending, avoid_worker=lost.worker_id)
            return await self._coord.requeue(pending, context.time_remaining())

    async def Embed(
        self, request: scheduler_pb2.ScheduleEmbedRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.EmbedResponse:
        req = request.request
        with tracing.server_span(
            "scheduler.Embed", context.invocation_metadata(), **_attributes(request)
        ):
            grant = await self._acquire(
                req,
                request.tenant_id,
                context,
                prompt_tokens=sum(estimate_tokens(text) for text in req.inputs),
            )
            progress = Progress()
            while True:
                embed = worker_pb2.ExecuteEmbedRequest(
                    lease_id=grant.lease.lease_id, request=req, tenant_id=request.tenant_id
                )
                progress.attempts += 1
                try:
                    with self._dispatch(
                        grant.lease,
                        lambda stub, metadata, embed=embed: stub.Embed(
                            embed, timeout=context.time_remaining(), metadata=metadata
                        ),
                    ) as (call, finished):
                        response = await call
                        finished.append(True)
                except LeaseLost as lost:
                    grant = await self._resume(grant, progress, lost, context)
                    continue
                response.queue_time_ms = grant.queue_time_ms
                return response

    @contextlib.contextmanager
    def _dispatch(
        self, lease: Lease, start: Callable[[worker_pb2_grpc.WorkerStub, tuple], Any]
    ) -> Iterator[tuple[Any, list]]:
        """Starts the leased call on its worker (inside a dispatch span) and owns the lease
        until the call ends, releasing it exactly once. A lost worker or a revoked lease
        raises LeaseLost (the caller may resume); a request error keeps its own code.
        Yields the call and a list the caller appends to once the request has completed."""
        with TRACER.start_as_current_span("scheduler.dispatch", attributes=_lease(lease)):
            call = start(self._workers.stub(lease.worker_address), tracing.outgoing_metadata())
            self._coord.on_revoke(lease.lease_id, lambda reason: call.cancel())
            finished: list[bool] = []
            try:
                yield call, finished
            except grpc.aio.AioRpcError as exc:
                raise _worker_failure(exc, lease) from None
            except asyncio.CancelledError:
                reason = self._coord.revoked.get(lease.lease_id)
                if reason is not None and not _task_cancelled():
                    raise LeaseLost(reason, lease.worker_id) from None
                raise
            finally:
                call.cancel()
                self._coord.release(lease.lease_id, completed=bool(finished))

    async def _acquire(
        self, req, tenant_id: str, context: grpc.aio.ServicerContext, **details: object
    ) -> Grant:
        """Queues the request and waits for its lease, inside a queue_wait span."""
        if not req.request_id or not req.model_id:
            raise InvalidArgument("request_id and model_id are required")
        logs.request_id.set(req.request_id)
        priority = convert.priority(req.priority)
        with TRACER.start_as_current_span("scheduler.queue_wait") as span:
            try:
                grant = await self._coord.acquire(
                    req.request_id,
                    req.model_id,
                    priority,
                    tenant_id,
                    context.time_remaining(),
                    **details,
                )
            except (ResourceExhausted, DeadlineExceeded) as exc:
                reason = exc.reason if isinstance(exc, Shed) else "deadline"
                self._metrics.shed.labels(tenant_id, priority_label(priority), reason).inc()
                raise
            span.set_attribute("inference.queue_time_ms", grant.queue_time_ms)
            if grant.request.model_id != req.model_id:
                span.set_attribute("inference.fallback_model", grant.request.model_id)
        self._metrics.queue_wait.labels(priority_label(priority)).observe(
            grant.queue_time_ms / 1000
        )
        return grant

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
            reg.worker_id,
            reg.address,
            reg.device.gpu_id or "cpu-0",
            models,
            reg.device,
            loadable={m.info.model_id: m.memory_bytes for m in reg.loadable},
            memory_budget=reg.memory_budget_bytes,
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
            scaling=[
                convert.model_scaling(d, core.scaling.bounds_of(m))
                for m, d in sorted(core.decisions.items())
            ],
        )


def _worker_failure(exc: grpc.aio.AioRpcError, lease: Lease) -> Exception:
    """A worker's error status: the request's own problem as is, a passed deadline as
    DEADLINE_EXCEEDED, anything else (the worker or its model failed) as LeaseLost."""
    if exc.code() in _REQUEST_CODES:
        return exc  # relayed unchanged by the error interceptor
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("deadline passed while generating")
    log.warning("worker %s failed a request: %s %s", lease.worker_id, exc.code(), exc.details())
    return LeaseLost(WORKER_LOST, lease.worker_id)


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
