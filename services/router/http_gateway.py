"""The router's HTTP door: the original JSON API and the OpenAI-compatible API.

A thin gateway over the router's own gRPC service (called on loopback), so HTTP callers get
the same authentication, validation, limits, tracing and metrics. gRPC status codes map to
HTTP ones here, in one place: 400, 401, 403, 404, 429 (with Retry-After), 503, 504.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from inference.v1 import types_pb2

from services.common.errors import InvalidArgument, Unavailable
from services.common.status import RETRY_AFTER_KEY, http_status, status_for
from services.router import json_fields, openai_format
from services.router.channel_pool import RouterChannels
from services.router.models import ModelDirectory

FORWARDED_HEADERS = ("authorization", "traceparent", "tracestate")
log = logging.getLogger(__name__)


class HttpGateway:
    def __init__(
        self,
        router_address: str,
        max_request_bytes: int = 512 * 1024,
        models: ModelDirectory | None = None,
        calls_per_connection: int = 100,
        authenticate: Callable[[Iterable[tuple[str, str]]], str] | None = None,
    ) -> None:
        self._models = models
        self._router = RouterChannels(router_address, calls_per_connection)
        self._authenticate = authenticate
        self.app = web.Application(
            middlewares=[_errors, self._caller_first], client_max_size=max_request_bytes
        )
        self.app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/health/ready", self.ready),
                web.post("/api/v1/inference", self.inference),
                web.get("/api/v1/status", self.status),
                web.get("/v1/models", self.models),
                web.post("/v1/completions", self.completions),
                web.post("/v1/chat/completions", self.chat_completions),
                web.post("/v1/embeddings", self.embeddings),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(
        self, listen: str, ssl_context: ssl.SSLContext | None = None, grace_s: float = 30.0
    ) -> int:
        """Serves on `listen`, over HTTPS with `ssl_context`. On `stop`, requests in flight
        have `grace_s` to finish."""
        host, _, port = listen.rpartition(":")
        # a client that goes away cancels its handler, which cancels the gRPC call: the
        # request leaves the queue or its sequence stops on the worker
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=grace_s
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, host.strip("[]") or "127.0.0.1", int(port), ssl_context=ssl_context
        )
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._router.close()

    @web.middleware
    async def _caller_first(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Who calls, before any body is read: a caller without a valid key gets 401 whatever
        it sent (health endpoints need no key)."""
        if self._authenticate is not None and not request.path.startswith("/health"):
            self._authenticate(_metadata(request))
        return await handler(request)

    # -- health, as vLLM and TGI serve it (no key needed: for probes and load balancers) ------
    async def health(self, request: web.Request) -> web.Response:
        """The router process serves."""
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        """At least one model is ready (503 otherwise, or while no scheduler answers)."""
        if self._models is None:
            return web.json_response({"status": "ok"})
        listed = await self._models.list()
        ready = sorted(m.model_id for m in listed.models if m.ready)
        if not ready:
            raise Unavailable("no model is ready yet", 1000)
        return web.json_response({"status": "ready", "models": ready})

    # -- the original JSON API ---------------------------------------------------------------
    async def inference(self, request: web.Request) -> web.Response:
        body = await _json(request)
        message = types_pb2.GenerateRequest(
            model_id=json_fields.text(body, "model_id"),
            prompt=json_fields.text(body, "prompt"),
            priority=json_fields.priority(body),
            max_tokens=json_fields.integer(body, "max_tokens", json_fields.UINT32_MAX) or 0,
            request_id=json_fields.text(body, "request_id"),
        )
        with self._router.stub() as router:
            answer = await router.Infer(message, metadata=_metadata(request))
        return web.json_response(_as_dict(answer))

    async def status(self, request: web.Request) -> web.Response:
        with self._router.stub() as router:
            answer = await router.GetStatus(
                types_pb2.GetStatusRequest(), metadata=_metadata(request)
            )
        return web.json_response(_as_dict(answer))

    # -- OpenAI-compatible ---------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        with self._router.stub() as router:
            listed = await router.ListModels(
                types_pb2.ListModelsRequest(), metadata=_metadata(request)
            )
        return web.json_response(openai_format.models(listed))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        return await self._generate(request, body, openai_format.completion_prompt(body), False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        return await self._generate(request, body, openai_format.chat_prompt(body), True)

    async def embeddings(self, request: web.Request) -> web.Response:
        message = openai_format.embed_request(await _json(request))
        with self._router.stub() as router:
            answer = await router.Embed(message, metadata=_metadata(request))
        return web.json_response(openai_format.embeddings(answer))

    async def _generate(
        self, request: web.Request, body: dict[str, Any], prompt: str, chat: bool
    ) -> web.StreamResponse:
        message = openai_format.generate_request(body, prompt)
        with self._router.stub() as router:
            if not body.get("stream"):
                answer = await router.Infer(message, metadata=_metadata(request))
                return web.json_response(openai_format.completion(answer, chat))
            options = openai_format.stream_options(body)
            call = router.Generate(message, metadata=_metadata(request))
            try:
                return await _stream(request, call, message.model_id, chat, options)
            finally:
                call.cancel()


async def _stream(
    request: web.Request, call: Any, model: str, chat: bool, options: tuple[bool, bool]
) -> web.StreamResponse:
    """The stream as server-sent events; errors before the first token become HTTP
    statuses, errors after it a final SSE error event."""
    first = await call.read()
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        await _write_events(response, call, first, model, chat, options)
    except grpc.aio.AioRpcError as exc:  # the status line is sent: an SSE error event
        body_text = json.dumps(error_body(exc)[0])
        await response.write(f"event: error\ndata: {body_text}\n\n".encode())
        return response
    await response.write(b"data: [DONE]\n\n")
    return response


async def _write_events(
    response: web.StreamResponse,
    call: Any,
    first: Any,
    model: str,
    chat: bool,
    options: tuple[bool, bool],
) -> None:
    """The stream's chunks as SSE events; usage in the last one, or in every one, when the
    client asked (`options`: include_usage, continuous_usage_stats)."""
    include_usage, continuous = options
    item, is_first, prompt, completion = first, True, 0, 0
    while item is not grpc.aio.EOF:
        event = openai_format.chunk(item, model, chat, is_first)
        if item.HasField("delta"):
            prompt = prompt or item.delta.prompt_tokens
            completion += item.delta.token_count
        if continuous:
            event["usage"] = openai_format.usage(prompt, completion)
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
        if include_usage and item.HasField("summary"):
            last = openai_format.usage_chunk(item.summary, item.request_id, model, chat)
            await response.write(f"data: {json.dumps(last)}\n\n".encode())
        item, is_first = await call.read(), False


def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    return tuple((k, request.headers[k]) for k in FORWARDED_HEADERS if k in request.headers)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, bad UTF-8, or nested too deep
        raise InvalidArgument("the body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object")
    return body


def _as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def error_body(exc: BaseException) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The OpenAI-shaped error body of a failure, its HTTP status and headers. A retry hint
    is in the headers and in the body (`retry_after_ms`: an SSE error event has no headers)."""
    code, details, trailers = status_for(exc)
    headers = {}
    error: dict[str, Any] = {"message": details, "type": code.name.lower(), "code": code.name}
    retry = dict(trailers).get(RETRY_AFTER_KEY)
    if retry is not None:
        headers = {"Retry-After": str(math.ceil(int(retry) / 1000)), RETRY_AFTER_KEY: retry}
        error["retry_after_ms"] = int(retry)
    return {"error": error}, http_status(code), headers


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:  # aiohttp's own: unknown path, method, body too large
        if exc.status < 400:
            raise
        error = {"message": exc.reason, "type": "http_error", "code": str(exc.status)}
        return web.json_response({"error": error}, status=exc.status)
    except asyncio.CancelledError:
        log.info("client went away: %s %s cancelled", request.method, request.path)
        raise
    except ConnectionResetError:
        log.info("client went away during %s %s", request.method, request.path)
        raise
    except Exception as exc:  # noqa: BLE001 - mapped by status_for; unexpected ones logged
        body, status, headers = error_body(exc)
        return web.json_response(body, status=status, headers=headers)
