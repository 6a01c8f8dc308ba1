"""The one place that maps errors to gRPC status codes (docs/architecture.md, "Status codes").

`ErrorMappingInterceptor` wraps every handler of a server: domain errors become their status
code, errors relayed from a downstream service keep their code (INTERNAL/UNKNOWN excepted),
anything else becomes INTERNAL with a generic message and the details go to the log only.

Every status one of our services answers carries the trailer `inference-status`, so a caller
tells "the service said UNAVAILABLE" (no worker for the model) from "the service could not be
reached" (`answered`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.common import errors

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after-ms"
LEASE_END_KEY = "lease-end"  # on ABORTED: how the lease ended
PREEMPTED = "preempted"  # its value when the scheduler revoked the lease for a higher class
ORIGIN_KEY = "inference-status"  # on every status a service of ours answers
_PASSED_ON = (RETRY_AFTER_KEY, LEASE_END_KEY)

_CODES: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.LeaseEnded: grpc.StatusCode.ABORTED,
}

# Codes a downstream service may hand us that we pass on unchanged.
_RELAYED_CODES = frozenset(_CODES.values())

# Codes a worker answers that belong to the request, not to the worker or the lease: the
# request ends with them instead of moving to another worker.
REQUEST_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# The HTTP door's status for each gRPC code; any other is a 500 (a bug).
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """Returns (code, client-safe details, trailing metadata) for an exception."""
    if isinstance(exc, errors.ServiceError):
        trailers: tuple[tuple[str, str], ...] = ()
        retry_after_ms = getattr(exc, "retry_after_ms", 0)
        if isinstance(exc, errors.ResourceExhausted) or retry_after_ms:
            trailers = ((RETRY_AFTER_KEY, str(retry_after_ms)),)
        elif isinstance(exc, errors.LeaseEnded):
            trailers = ((LEASE_END_KEY, exc.outcome),)
        return _code(exc), exc.message, trailers
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _RELAYED_CODES:
        kept = [(k, v) for k, v in (exc.trailing_metadata() or ()) if k in _PASSED_ON]
        return exc.code(), exc.details() or exc.code().name, tuple(kept)
    log.error("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error", ()


def refusal_for(exc: BaseException) -> tuple[grpc.StatusCode, str, int]:
    """`status_for` as a message carries it rather than a call: (code, details, retry after
    in ms, 0 when not said)."""
    code, details, trailers = status_for(exc)
    retry = next((int(v) for k, v in trailers if k == RETRY_AFTER_KEY), 0)
    return code, details, retry


def error_for(code: int, details: str, retry_after_ms: int = 0) -> Exception:
    """The error a refusal carried in a message stands for (`refusal_for` on the other side):
    raised where the call would have raised, it ends the caller's request with the same status
    and retry hint. A code we do not relay becomes INTERNAL there, as a call's would."""
    status = _STATUS_BY_VALUE.get(code)
    with_hint = _WITH_RETRY_HINT.get(status)
    if with_hint is not None:
        return with_hint(details, retry_after_ms)
    kind = _ERROR_BY_STATUS.get(status)
    if kind is None or kind is errors.LeaseEnded:
        return RuntimeError(f"refused with status {code}: {details}")
    return kind(details)


_STATUS_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}
_ERROR_BY_STATUS: dict[grpc.StatusCode | None, type[errors.ServiceError]] = {
    status: kind for kind, status in _CODES.items()
}
_WITH_RETRY_HINT: dict[grpc.StatusCode | None, Callable[[str, int], errors.ServiceError]] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}


def answered(exc: grpc.aio.AioRpcError) -> bool:
    """True when a service of ours answered with this status; False when the call failed on
    the way (peer unreachable, connection cut, process killed)."""
    return any(k == ORIGIN_KEY for k, _ in (exc.trailing_metadata() or ()))


def trailer(exc: grpc.aio.AioRpcError, key: str) -> str:
    """A trailing metadata value of a failed call; "" when absent."""
    return next((str(v) for k, v in (exc.trailing_metadata() or ()) if k == key), "")


def _code(exc: errors.ServiceError) -> grpc.StatusCode:
    """The code of the nearest mapped class (subclasses share their base's code)."""
    return next(_CODES[cls] for cls in type(exc).__mro__ if cls in _CODES)


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The status code `exc` ends a call with (no logging; for traces and metrics)."""
    if isinstance(exc, errors.ServiceError):
        return _code(exc)
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _RELAYED_CODES:
        return exc.code()
    return grpc.StatusCode.INTERNAL


def final_code(exc: BaseException) -> str:
    """The name of the status a call ends with when `exc` escapes its handler."""
    import asyncio

    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    if isinstance(exc, GeneratorExit):
        return "OK"  # the consumer stopped reading after the result (Infer)
    return code_for(exc).name


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Ends the call with the status for `exc`. Always raises."""
    code, details, trailers = status_for(exc)
    context.set_trailing_metadata((*trailers, (ORIGIN_KEY, code.name)))
    await context.abort(code, details)


class _Malformed:
    """What a request body that does not parse (bad protobuf, invalid UTF-8) becomes."""


MALFORMED = _Malformed()
_MALFORMED_ERROR = errors.InvalidArgument("malformed request: the body is not a valid message")


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns MALFORMED instead of raising (gRPC would answer UNKNOWN
    naming a Python class); the behavior then answers INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any body that does not parse is malformed
            return MALFORMED

    return parse


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if request_or_iterator is MALFORMED:
                raise _MALFORMED_ERROR
            return await behavior(request_or_iterator, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status, logged if unexpected
            await abort_with(context, exc)

    return wrapped


def _wrap_streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        return _wrap_unary(behavior)  # writes with context.write(); same error handling

    async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if request_or_iterator is MALFORMED:
                raise _MALFORMED_ERROR
            async for item in behavior(request_or_iterator, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc)

    return wrapped


def rebuild_handler(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and codec (or with `request_deserializer`) whose behavior
    is `wrap(behavior, streaming)`."""
    codec = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **codec)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **codec)


def refusing_handler(handler: grpc.RpcMethodHandler, error: BaseException) -> grpc.RpcMethodHandler:
    """A handler of the same kind that ends every call with the status of `error` without
    parsing the request: a refused caller's body is never read."""

    def wrap(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await abort_with(context, error)
                yield  # an async generator, as the handler it replaces

            return refuse_stream

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await abort_with(context, error)

        return refuse

    return rebuild_handler(handler, wrap, request_deserializer=_unread)


def _unread(data: bytes) -> None:
    return None


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that rewrites the handler of each call (`rewrite`), except for
    methods under `open_prefixes` (health checks, reflection)."""

    open_prefixes: tuple[str, ...] = ()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.open_prefixes):
            return handler
        return self.rewrite(handler, details)

    def rewrite(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ErrorMappingInterceptor(HandlerInterceptor):
    """Applies `status_for` to every handler of the server it is installed on."""

    def rewrite(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        return rebuild_handler(
            handler,
            lambda behavior, streaming: (
                _wrap_streaming(behavior) if streaming else _wrap_unary(behavior)
            ),
            tolerant(handler.request_deserializer),
        )
