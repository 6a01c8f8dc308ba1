"""The public door's first check, before a request body is parsed: who is calling.

`DoorInterceptor` authenticates every Router call from its metadata (API key → tenant). A
caller without a valid key is refused UNAUTHENTICATED at once, and its body is never parsed
(its deserializer ignores the bytes). The tenant of an accepted call is available to the
servicer through `caller()`. The public port's own limits (message size, streams per
connection, metadata size) are gRPC server options (`door_options`).
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from services.common.errors import Unauthenticated
from services.common.status import HandlerInterceptor, rebuild_handler, refusing_handler

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")


def caller() -> str:
    """The tenant of the call being served (set by the interceptor)."""
    return _tenant.get()


def door_options(max_request_bytes: int, max_streams: int, max_metadata_bytes: int) -> tuple:
    """gRPC server options of the public port."""
    return (
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_concurrent_streams", max_streams),
        ("grpc.max_metadata_size", max_metadata_bytes),
    )


class DoorInterceptor(HandlerInterceptor):
    open_prefixes = OPEN_PREFIXES

    def __init__(self, authenticate: Callable[[Iterable[tuple[str, Any]]], str]) -> None:
        self._authenticate = authenticate

    def rewrite(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        try:
            tenant = self._authenticate(details.invocation_metadata or ())
        except Unauthenticated as refused:
            return refusing_handler(handler, refused)
        return rebuild_handler(handler, _as(tenant))


def _as(tenant: str) -> Callable[[Callable[..., Any], bool], Callable[..., Any]]:
    """Runs the behavior with `caller()` returning `tenant`."""

    def wrap(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _tenant.set(tenant)
                async for item in behavior(request, context):
                    yield item

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _tenant.set(tenant)
            return await behavior(request, context)

        return unary

    return wrap
