"""A shared secret that internal calls carry (router → scheduler, scheduler → worker,
worker → scheduler), so the scheduler and the workers serve only their own fleet.

`SecretCheckInterceptor` refuses calls without the secret with UNAUTHENTICATED (health checks
stay open for probes); `internal_channel` adds it to every call of a channel.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Callable
from typing import Any

import grpc

from services.common.errors import Unauthenticated
from services.common.status import HandlerInterceptor, rebuild_handler, refusing_handler
from services.common.tls import TlsFiles

SECRET_KEY = "x-internal-secret"
_WRONG_SECRET = Unauthenticated("internal service: missing or wrong shared secret")
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class SecretCheckInterceptor(HandlerInterceptor):
    open_prefixes = OPEN_PREFIXES

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def rewrite(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        sent = next((v for k, v in details.invocation_metadata or () if k == SECRET_KEY), "")
        if isinstance(sent, bytes):
            sent = sent.decode("latin-1")
        if hmac.compare_digest(sent, self._secret):
            return handler
        return refusing_handler(handler, _WRONG_SECRET)  # its body is never parsed


class RoleCheckInterceptor(HandlerInterceptor):
    """With mTLS, each method serves only callers whose certificate names an allowed role
    (its common name: "router", "scheduler", "worker", "actuator"); others get
    PERMISSION_DENIED. `roles`: method name (as in "/inference.v1.Scheduler/Acquire") →
    the roles that may call it; a method not listed is open to every certified caller."""

    def __init__(self, roles: dict[str, frozenset[str]]) -> None:
        self._roles = roles

    def rewrite(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        allowed = self._roles.get(details.method)
        if allowed is None:
            return handler
        return rebuild_handler(handler, lambda behavior, streaming: _checked(behavior, allowed))


def caller_roles(context: grpc.aio.ServicerContext) -> set[str]:
    names = context.auth_context().get("x509_common_name", [])
    return {n.decode() if isinstance(n, bytes) else str(n) for n in names}


def _checked(behavior: Callable[..., Any], allowed: frozenset[str]) -> Callable[..., Any]:
    async def refuse(context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this method is for {', '.join(sorted(allowed))}, not for this certificate",
        )

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not caller_roles(context) & allowed:
                await refuse(context)
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not caller_roles(context) & allowed:
            await refuse(context)
        return await behavior(request, context)

    return unary


class _WithSecret:
    """A multicallable that adds the secret to the call's metadata."""

    def __init__(self, call: Any, secret: str) -> None:
        self._call = call
        self._pair = (SECRET_KEY, secret)

    def __call__(self, request: Any = None, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        # request: None for a stream written with call.write()
        return self._call(request, *args, metadata=(*(metadata or ()), self._pair), **kwargs)


class SecretChannel:
    """A channel whose every call carries the fleet's secret. It adds one metadata pair per
    call; gRPC's client interceptors would add a task and a hop per streamed message."""

    def __init__(self, channel: grpc.aio.Channel, secret: str) -> None:
        self._channel = channel
        self._secret = secret

    def unary_unary(self, *args: Any, **kwargs: Any) -> _WithSecret:
        return _WithSecret(self._channel.unary_unary(*args, **kwargs), self._secret)

    def unary_stream(self, *args: Any, **kwargs: Any) -> _WithSecret:
        return _WithSecret(self._channel.unary_stream(*args, **kwargs), self._secret)

    def stream_unary(self, *args: Any, **kwargs: Any) -> _WithSecret:
        return _WithSecret(self._channel.stream_unary(*args, **kwargs), self._secret)

    def stream_stream(self, *args: Any, **kwargs: Any) -> _WithSecret:
        return _WithSecret(self._channel.stream_stream(*args, **kwargs), self._secret)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    async def __aenter__(self) -> SecretChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def internal_channel(
    address: str, secret: str, options: Any, tls: TlsFiles | None = None, peer_role: str = ""
) -> grpc.aio.Channel | SecretChannel:
    """A channel to an internal service: mTLS when certificates are configured, carrying the
    shared secret when one is. With mTLS the peer's certificate is checked for its role's
    name (`peer_role`: "scheduler", "worker"), not for the address dialled: pods are reached
    by IP, which no certificate names."""
    if tls is not None and tls.enabled:
        if peer_role:
            options = (*options, ("grpc.ssl_target_name_override", peer_role))
        channel = grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)
    else:
        channel = grpc.aio.insecure_channel(address, options=options)
    return SecretChannel(channel, secret) if secret else channel
