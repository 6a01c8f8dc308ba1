"""inference.v1.Worker: runs leased requests on the model engines and streams tokens.

Nothing runs without a valid lease (`leases.LeaseBook`); each lease's end is reported to the
scheduler with its outcome and tokens. The first token goes out at once; after it, what the
engine produces within `flush_interval_s` is coalesced into one message (each gRPC message
costs CPU on both ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
from inference.v1 import types_pb2, worker_pb2, worker_pb2_grpc

from services.common import logs, tracing
from services.common.errors import LeaseEnded, ServiceError, Unavailable
from services.common.status import PREEMPTED
from services.gpu_worker import convert
from services.gpu_worker.engines.base import Event, Finished, FinishReason, TextDelta
from services.gpu_worker.host import ModelHost
from services.gpu_worker.leases import LeaseBook, RunningLease
from services.gpu_worker.metrics import WorkerMetrics

REVOKED = object()  # put in a sequence's event queue when its lease is revoked


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(
        self,
        host: ModelHost,
        worker_id: str,
        gpu_id: str,
        flush_interval_s: float,
        metrics: WorkerMetrics,
        leases: LeaseBook,
    ) -> None:
        self._host = host
        self._leases = leases
        self._worker_id = worker_id
        self._gpu_id = gpu_id
        self._flush_s = flush_interval_s
        self._metrics = metrics

    async def Execute(
        self, request: worker_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        attributes = self._attributes(request)
        logs.request_id.set(request.request.request_id)
        with tracing.server_span("worker.Execute", context.invocation_metadata(), **attributes):
            lease = await self._admit(request)
            outcome = types_pb2.LEASE_OUTCOME_CANCELLED
            try:
                resume = request.resume if request.HasField("resume") else None
                stream = self._generate(request.request, resume, lease)
                async with contextlib.aclosing(stream) as messages:
                    async for message in messages:
                        yield message
                outcome = types_pb2.LEASE_OUTCOME_COMPLETED
            except BaseException as exc:
                outcome = _outcome(exc, context)
                raise
            finally:
                self._leases.end(lease, outcome)

    async def _admit(self, request) -> RunningLease:
        return await self._leases.admit(
            request.lease,
            request.lease_id,
            request.request.request_id,
            request.request.model_id,
        )

    def _attributes(self, request) -> dict[str, object]:
        return {
            "inference.model": request.request.model_id,
            "inference.request_id": request.request.request_id,
            "inference.tenant": request.tenant_id,
            "inference.lease": request.lease_id,
            "inference.worker": self._worker_id,
            "inference.gpu_id": self._gpu_id,
        }

    async def _generate(
        self,
        req: types_pb2.GenerateRequest,
        resume: types_pb2.ResumeState | None,
        lease: RunningLease,
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        engine = self._host.generative(req.model_id)
        generation = convert.generation_input(req, engine.spec, resume, lease.claims.max_tokens)
        started, started_ns = time.monotonic(), time.time_ns()
        if generation.remaining_tokens <= 0:  # it had generated all it may before it moved
            yield self._summary(req, Finished(FinishReason.LENGTH, 0, 0), 0.0, 0.0)
            return
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        handle = engine.submit(
            generation, lambda e: loop.call_soon_threadsafe(events.put_nowait, e)
        )
        lease.watch(lambda: events.put_nowait(REVOKED))
        tally, first_token_ns = lease.tally, 0
        try:
            while True:
                batch = [await events.get()]
                if tally.first_token_ms and self._flush_s > 0:
                    await asyncio.sleep(self._flush_s)  # let the next tokens join this message
                while not events.empty():
                    batch.append(events.get_nowait())
                delta, finished = _merge(batch)
                tally.completion_tokens += delta.token_count
                if delta.token_count or delta.text:
                    if not tally.first_token_ms:
                        tally.first_token_ms = (time.monotonic() - started) * 1000.0
                        first_token_ns = time.time_ns()
                    yield types_pb2.GenerateResponse(request_id=req.request_id, delta=delta)
                if finished is not None:
                    tally.prompt_tokens = finished.prompt_tokens
                    self._metrics.tokens_generated(req.model_id, finished.completion_tokens)
                    tracing.record_phases(started_ns, first_token_ns, time.time_ns(), finished)
                    elapsed_ms = (time.monotonic() - started) * 1000.0
                    yield self._summary(req, finished, elapsed_ms, tally.first_token_ms)
                    return
        finally:
            handle.cancel()

    def _summary(
        self, req: types_pb2.GenerateRequest, finished: Finished, elapsed_ms: float, ttft_ms: float
    ) -> types_pb2.GenerateResponse:
        summary = convert.summary(
            finished, req.model_id, self._worker_id, self._gpu_id, elapsed_ms, ttft_ms
        )
        return types_pb2.GenerateResponse(request_id=req.request_id, summary=summary)

    async def Embed(
        self, request: worker_pb2.ExecuteEmbedRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.EmbedResponse:
        attributes = self._attributes(request)
        with tracing.server_span("worker.Embed", context.invocation_metadata(), **attributes):
            lease = await self._admit(request)
            outcome = types_pb2.LEASE_OUTCOME_CANCELLED
            try:
                response = await embed(self._host, request, self._worker_id, self._gpu_id)
                lease.tally.prompt_tokens = response.prompt_tokens
                outcome = types_pb2.LEASE_OUTCOME_COMPLETED
                return response
            except BaseException as exc:
                outcome = _outcome(exc, context)
                raise
            finally:
                self._leases.end(lease, outcome)


async def embed(
    host: ModelHost, request: worker_pb2.ExecuteEmbedRequest, worker_id: str, gpu_id: str
) -> types_pb2.EmbedResponse:
    """Runs one embedding request on the model's batching engine."""
    req = request.request
    engine = host.embedding(req.model_id)
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    started = time.monotonic()

    def sink(event: object) -> None:
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(event))

    handle = engine.embed(list(req.inputs), sink)
    try:
        result = await done
    finally:
        handle.cancel()
    if isinstance(result, BaseException):
        _raise_error_event(result)
    return types_pb2.EmbedResponse(
        request_id=req.request_id,
        model_id=req.model_id,
        embeddings=[types_pb2.Embedding(values=v) for v in result.vectors],
        dimensions=len(result.vectors[0]) if result.vectors else 0,
        prompt_tokens=result.prompt_tokens,
        inference_time_ms=(time.monotonic() - started) * 1000.0,
        gpu_id=gpu_id,
        worker_id=worker_id,
    )


def _outcome(exc: BaseException, context: grpc.aio.ServicerContext) -> int:
    """How a lease's work ended, from what ended it."""
    if isinstance(exc, LeaseEnded):
        return types_pb2.LEASE_OUTCOME_PREEMPTED
    if isinstance(exc, ServiceError):
        if isinstance(exc, Unavailable):
            return types_pb2.LEASE_OUTCOME_FAILED
        return types_pb2.LEASE_OUTCOME_REJECTED
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return types_pb2.LEASE_OUTCOME_DEADLINE if expired else types_pb2.LEASE_OUTCOME_CANCELLED
    return types_pb2.LEASE_OUTCOME_FAILED


def _merge(batch: list[Event]) -> tuple[types_pb2.TokenDelta, Finished | None]:
    """Joins deltas; returns (the delta, the Finished event if one came). Raises an error
    event: a ServiceError as is, anything else (an engine fault) as Unavailable."""
    texts, tokens, prompt, finished, revoked = [], 0, 0, None, False
    for event in batch:
        if event is REVOKED:
            revoked = True
        elif isinstance(event, TextDelta):
            texts.append(event.text)
            tokens += event.token_count
            prompt = prompt or event.prompt_tokens
        elif isinstance(event, Finished):
            finished = event
        else:
            _raise_error_event(event)
    if revoked and finished is None:  # a generation that finished as it was revoked stands
        raise LeaseEnded("the scheduler revoked this lease to preempt it", PREEMPTED)
    return types_pb2.TokenDelta(
        text="".join(texts), token_count=tokens, prompt_tokens=prompt
    ), finished


def _raise_error_event(event: BaseException) -> None:
    """An engine's error event: a request problem (ServiceError) as is, anything else (an
    engine fault) as Unavailable."""
    if isinstance(event, ServiceError):
        raise event
    raise Unavailable("the model failed on this worker") from event
