"""inference.v1.Router: authenticate, validate, set the deadline, then run the request under a
lease: the scheduler grants it, the worker streams the tokens here (`LeasedRun`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from inference.v1 import router_pb2, router_pb2_grpc, types_pb2

from services.common import leased_run, logs, tracing
from services.common.errors import DeadlineExceeded, Unavailable
from services.common.leased_run import LeasedRun
from services.common.metrics import UNKNOWN
from services.common.status import final_code
from services.common.tokens import estimate_tokens
from services.router import door, validation
from services.router.admission import Admission
from services.router.cache import ResponseCache
from services.router.config import RouterConfig
from services.router.metrics import RouterMetrics, StreamObserver
from services.router.models import ModelDirectory, StatusViews
from services.router.pools import Pools
from services.router.prompt_blocks import PromptBlocks

REQUEST_ID_HEADER = "x-request-id"
TRACER = tracing.tracer("services.router")
log = logging.getLogger(__name__)


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(
        self,
        config: RouterConfig,
        pools: Pools,
        runner: LeasedRun,
        models: ModelDirectory,
        admission: Admission,
        metrics: RouterMetrics,
        blocks: PromptBlocks | None = None,
    ) -> None:
        self._blocks = blocks
        self._metrics = metrics
        self._config = config
        self._runner = runner
        self._models = models
        self._admission = admission
        self._status = StatusViews(pools, config.status_cache_s)
        self._cache = ResponseCache(config.cache_max_entries, config.cache_ttl_s, time.monotonic)

    async def Generate(
        self, request: types_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        async with contextlib.aclosing(self._forward("Generate", request, context)) as stream:
            async for message in stream:
                yield message

    async def Infer(
        self, request: types_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.InferResponse:
        texts: list[str] = []
        async with contextlib.aclosing(self._forward("Infer", request, context)) as stream:
            async for message in stream:
                if message.HasField("delta"):
                    texts.append(message.delta.text)
                else:
                    return _infer_response(texts, message)
        raise Unavailable("the generation stream ended without a result")

    async def Embed(
        self, request: types_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.EmbedResponse:
        metadata = context.invocation_metadata() or ()
        attributes = {"inference.model": request.model_id, "inference.inputs": len(request.inputs)}
        with tracing.server_span("router.Embed", metadata, **attributes) as span:
            tenant = door.caller()
            span.set_attribute("inference.tenant", tenant)
            validation.check_embed_shape(request, self._config.max_prompt_chars)
            model = await self._models.get(request.model_id)
            validation.check_embed_against_model(request, model)
            admitted = validation.normalized(request)
            self._admission.check(tenant, admitted.model_id, admitted.priority)
            reservation = self._admission.reserve(
                tenant, sum(estimate_tokens(text) for text in admitted.inputs)
            )
            used = None
            try:  # from here on the reservation is settled however the call ends
                await context.send_initial_metadata(
                    ((REQUEST_ID_HEADER, admitted.request_id), *tracing.outgoing_metadata())
                )
                response = await self._runner.embed(
                    leased_run.embed_ticket(admitted, tenant), admitted, self._deadline(context)
                )
                used = response.prompt_tokens
                return response
            finally:
                reservation.finish(used)

    async def ListModels(
        self, request: types_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.ListModelsResponse:
        return await self._models.list()

    async def GetStatus(
        self, request: types_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.GetStatusResponse:
        """The fleet for an admin (workers, leases, scaling); a tenant sees its own requests
        and the models' readiness, nothing of the workers or of other tenants."""
        tenant = door.caller()
        return await self._status.get("" if self._admission.policies.is_admin(tenant) else tenant)

    async def _forward(
        self, rpc: str, request: types_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        try:
            async with contextlib.aclosing(self._traced(rpc, request, context)) as stream:
                async for message in stream:
                    yield message
        except BaseException as exc:
            self._count(rpc, request.model_id, final_code(exc))
            raise
        self._count(rpc, request.model_id, "OK")

    def _count(self, rpc: str, model_id: str, code: str) -> None:
        model = model_id if self._models.known(model_id) else UNKNOWN
        self._metrics.requests.labels(rpc, model, code).inc()

    async def _traced(
        self, rpc: str, request: types_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        metadata = context.invocation_metadata() or ()
        with tracing.server_span(
            f"router.{rpc}",
            metadata,
            **{
                "inference.model": request.model_id,
                "inference.priority": types_pb2.Priority.Name(request.priority)
                if request.priority in types_pb2.Priority.values()
                else str(request.priority),
            },
        ) as span:
            tenant = door.caller()
            admitted, reservation = await self._admit(request, tenant, span)
            used = None  # tokens the request really took; unknown unless it completes
            try:  # from here on the reservation is settled however the call ends
                await context.send_initial_metadata(
                    ((REQUEST_ID_HEADER, admitted.request_id), *tracing.outgoing_metadata())
                )
                cache_key = self._cache.key(tenant, admitted)
                replay = self._cache.get(cache_key, admitted.request_id) if cache_key else None
                if cache_key is not None:
                    (self._metrics.cache_hits if replay else self._metrics.cache_misses).inc()
                if replay is not None:  # answered without touching the scheduler
                    span.set_attribute("inference.cache_hit", True)
                    used = 0
                    for message in replay:
                        yield message
                    return
                relay = self._relay(admitted, tenant, context, span, cache_key)
                async with contextlib.aclosing(relay) as stream:
                    async for message in stream:
                        if message.HasField("summary"):
                            s = message.summary
                            resumed = admitted.resume.generated_tokens  # charged before
                            used = s.prompt_tokens + s.completion_tokens - resumed
                        yield message
            finally:
                reservation.finish(used)

    async def _admit(
        self, request: types_pb2.GenerateRequest, tenant: str, span: Any
    ) -> tuple[types_pb2.GenerateRequest, Any]:
        """Validates the request against its model, checks the tenant's rights and charges
        its limits: the admitted request (id assigned, max_tokens made explicit) and the
        reservation to settle when it ends."""
        span.set_attribute("inference.tenant", tenant)
        with TRACER.start_as_current_span("router.validate"):
            validation.check_shape(request, self._config.max_prompt_chars)
            model = await self._models.get(request.model_id)
            validation.check_against_model(request, model)
        admitted = validation.normalized(request)
        self._admission.check(tenant, admitted.model_id, admitted.priority)
        admitted.max_tokens = admitted.max_tokens or model.default_max_tokens
        # a resumed stream: its prompt, the text received (prefilled again) and what is left
        prompt = estimate_tokens(admitted.prompt + admitted.resume.generated_text)
        left = admitted.max_tokens - admitted.resume.generated_tokens
        reservation = self._admission.reserve(tenant, prompt + left)
        span.set_attribute("inference.request_id", admitted.request_id)
        logs.request_id.set(admitted.request_id)
        log.debug("admitted for %s: model=%s prompt=%r", tenant, admitted.model_id, admitted.prompt)
        return admitted, reservation

    async def _relay(
        self,
        admitted: types_pb2.GenerateRequest,
        tenant: str,
        context: grpc.aio.ServicerContext,
        span: Any,
        cache_key: bytes | None,
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        """The request's stream from its leased worker, timed, traced and cached."""
        weight = self._admission.policies.spec(tenant).weight
        ticket = leased_run.generate_ticket(admitted, tenant, weight)
        if self._blocks is not None:
            self._blocks.describe(ticket, admitted)
        stream = self._runner.generate(ticket, admitted, self._deadline(context))
        observer = StreamObserver(self._metrics, admitted.model_id)
        collected: list[types_pb2.GenerateResponse] = []
        async with contextlib.aclosing(stream) as messages:
            async for message in messages:
                if message.HasField("delta"):
                    observer.delta(message.delta.token_count)
                else:
                    tracing.record_summary(span, message.summary)
                if cache_key is not None:
                    collected.append(message)
                    if message.HasField("summary") and _undegraded(admitted, message.summary):
                        self._cache.put(cache_key, collected)
                yield message

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The request's deadline, in monotonic seconds: the client's, within our bounds."""
        remaining = context.time_remaining()
        if remaining is None:
            remaining = self._config.default_deadline_s
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed before the request was forwarded")
        return time.monotonic() + min(remaining, self._config.max_deadline_s)


def _undegraded(request: types_pb2.GenerateRequest, summary: types_pb2.GenerationSummary) -> bool:
    """The answer is what the request asked for: not run on a fallback model, nor cut short
    by a max_tokens the scheduler capped under load (only such answers are cached)."""
    if summary.model_id != request.model_id:
        return False
    capped = summary.completion_tokens < request.max_tokens
    return not (summary.finish_reason == types_pb2.FINISH_REASON_LENGTH and capped)


def _infer_response(
    texts: list[str], message: types_pb2.GenerateResponse
) -> router_pb2.InferResponse:
    s = message.summary
    return router_pb2.InferResponse(
        generated_text="".join(texts),
        inference_time_ms=s.inference_time_ms,
        gpu_id=s.gpu_id,
        model_id=s.model_id,
        request_id=message.request_id,
        queue_time_ms=s.queue_time_ms,
        finish_reason=s.finish_reason,
        prompt_tokens=s.prompt_tokens,
        completion_tokens=s.completion_tokens,
        time_to_first_token_ms=s.time_to_first_token_ms,
        worker_id=s.worker_id,
        cached_prompt_tokens=s.cached_prompt_tokens,
    )
