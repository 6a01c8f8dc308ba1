"""inference.v1.Router: authenticate, validate, set the deadline, forward to the scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from inference.v1 import router_pb2, router_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, types_pb2

from services.common.errors import DeadlineExceeded, Unavailable
from services.router import validation
from services.router.auth import Authenticator
from services.router.config import RouterConfig
from services.router.models import ModelDirectory

REQUEST_ID_HEADER = "x-request-id"
# Details gRPC gives when the scheduler could not be reached at all.
_CONNECTION_FAILURES = ("failed to connect", "socket closed", "connection reset", "broken pipe")


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(
        self,
        config: RouterConfig,
        scheduler: scheduler_pb2_grpc.SchedulerStub,
        models: ModelDirectory,
        auth: Authenticator,
    ) -> None:
        self._config = config
        self._scheduler = scheduler
        self._models = models
        self._auth = auth

    async def Generate(
        self, request: types_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        async for message in self._forward(request, context):
            yield message

    async def Infer(
        self, request: types_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.InferResponse:
        texts: list[str] = []
        async for message in self._forward(request, context):
            if message.HasField("delta"):
                texts.append(message.delta.text)
                continue
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
            )
        raise Unavailable("the generation stream ended without a result")

    async def Embed(
        self, request: types_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.EmbedResponse:
        tenant = self._auth.tenant_for(context.invocation_metadata() or ())
        validation.check_embed_shape(request, self._config.max_prompt_chars)
        model = await self._models.get(request.model_id)
        validation.check_kind(model, types_pb2.MODEL_KIND_EMBEDDING)
        admitted = validation.normalized(request)
        await context.send_initial_metadata(((REQUEST_ID_HEADER, admitted.request_id),))
        try:
            return await self._scheduler.Embed(
                scheduler_pb2.ScheduleEmbedRequest(request=admitted, tenant_id=tenant),
                timeout=self._deadline_s(context),
            )
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc) from None

    async def ListModels(
        self, request: types_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.ListModelsResponse:
        self._auth.tenant_for(context.invocation_metadata() or ())
        return await self._models.list()

    async def GetStatus(
        self, request: types_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> types_pb2.GetStatusResponse:
        self._auth.tenant_for(context.invocation_metadata() or ())
        try:
            return await self._scheduler.GetStatus(types_pb2.GetStatusRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc) from None

    async def _forward(
        self, request: types_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        tenant = self._auth.tenant_for(context.invocation_metadata() or ())
        validation.check_shape(request, self._config.max_prompt_chars)
        model = await self._models.get(request.model_id)
        validation.check_against_model(request, model)
        admitted = validation.normalized(request)
        await context.send_initial_metadata(((REQUEST_ID_HEADER, admitted.request_id),))
        call = self._scheduler.Schedule(
            scheduler_pb2.ScheduleRequest(request=admitted, tenant_id=tenant),
            timeout=self._deadline_s(context),
        )
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc) from None
        finally:
            call.cancel()

    def _deadline_s(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self._config.default_deadline_s
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed before the request was forwarded")
        return min(remaining, self._config.max_deadline_s)


def _upstream_error(exc: grpc.aio.AioRpcError) -> Exception:
    """The scheduler's status, passed on; a scheduler we cannot reach is UNAVAILABLE."""
    details = (exc.details() or "").lower()
    if exc.code() == grpc.StatusCode.UNAVAILABLE and any(
        s in details for s in _CONNECTION_FAILURES
    ):
        return Unavailable("scheduler unavailable")
    return exc
