"""A shared secret that internal calls carry (router → scheduler, scheduler → worker,
worker → scheduler), so the scheduler and the workers serve only their own fleet.

`SecretCheckInterceptor` refuses calls without the secret with UNAUTHENTICATED (health checks
stay open for probes); `secret_interceptors` add it to every call of a channel.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.common.status import rebuild_handler
from services.common.tls import TlsFiles

SECRET_KEY = "x-internal-secret"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class SecretCheckInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, secret: str) -> None:
        self._secret = secret

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = next((v for k, v in details.invocation_metadata or () if k == SECRET_KEY), "")
        if isinstance(sent, bytes):
            sent = sent.decode("latin-1")
        if hmac.compare_digest(sent, self._secret):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, "internal service: missing or wrong shared secret"
        )

    return rebuild_handler(handler, lambda behavior, streaming: refuse)


class _AddsSecret:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    def _with_secret(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(SECRET_KEY, self._secret)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each client interceptor under the first kind it implements, so each kind
# of call needs an interceptor of its own.
class _UnaryUnary(_AddsSecret, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_secret(details), request)


class _UnaryStream(_AddsSecret, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_secret(details), request)


class _StreamUnary(_AddsSecret, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._with_secret(details), request_iterator)


class _StreamStream(_AddsSecret, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._with_secret(details), request_iterator)


def secret_interceptors(secret: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that add the secret to every kind of call."""
    return [kind(secret) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def internal_channel(
    address: str, secret: str, options: Any, tls: TlsFiles | None = None
) -> grpc.aio.Channel:
    """A channel to an internal service: mTLS when certificates are configured, carrying the
    shared secret when one is."""
    interceptors = secret_interceptors(secret) if secret else None
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(
            address, tls.channel_credentials(), options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
