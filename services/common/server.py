"""Server bootstrap shared by the three services.

`GrpcService` builds a grpc.aio server with the error-mapping interceptor, grpc.health.v1 and
server reflection, binds it, and shuts it down gracefully on SIGTERM/SIGINT: the health status
turns NOT_SERVING, new calls are refused, in-flight calls get `grace_s` to finish and are then
cancelled (clients see UNAVAILABLE or CANCELLED, never a hang).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.internal_auth import RoleCheckInterceptor, SecretCheckInterceptor
from services.common.status import ErrorMappingInterceptor
from services.common.tls import TlsFiles

log = logging.getLogger(__name__)

# Messages carry token deltas and status; 16 MiB leaves room for long prompts.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A peer that restarts is reached again within about a second (gRPC's default backoff grows
# to 120 s): workers re-register and routers resubmit soon after a scheduler comes back.
RECONNECT_BACKOFF_MS = 1000
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)
# The token path (router → worker) finds a silent peer in seconds: while a call is open the
# channel pings every second and gives the peer 3 s to answer (TCP retransmits a reply within
# that after a shorter blip), so a worker cut off is known 1-4 s after it went silent, never
# from a slow step (gRPC answers pings on its own threads, whatever the model does).
TOKEN_PATH_KEEPALIVE_MS, TOKEN_PATH_PING_TIMEOUT_MS = 1_000, 3_000
TOKEN_PATH_OPTIONS = tuple(
    (
        dict(CHANNEL_OPTIONS)
        | {
            "grpc.keepalive_time_ms": TOKEN_PATH_KEEPALIVE_MS,
            "grpc.keepalive_timeout_ms": TOKEN_PATH_PING_TIMEOUT_MS,
            "grpc.keepalive_permit_without_calls": 0,  # an idle channel costs nothing
        }
    ).items()
)
# The scheduler watches its workers' sessions the same way from its side: a worker whose
# report did not change sends no heartbeat for a few intervals, and a session whose peer went
# silent closes 1-4 s after (its worker is then suspect, and removed unless it registers again).
SESSION_WATCH_OPTIONS = (
    ("grpc.keepalive_time_ms", TOKEN_PATH_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", TOKEN_PATH_PING_TIMEOUT_MS),
)
SESSION_CHANNEL_OPTIONS = tuple((dict(CHANNEL_OPTIONS) | dict(SESSION_WATCH_OPTIONS)).items())
SERVER_OPTIONS = (
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # peers may ping this often, streams quiet or not (the token path's keepalive)
    ("grpc.http2.min_recv_ping_interval_without_data_ms", TOKEN_PATH_KEEPALIVE_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
)


def install_uvloop() -> None:
    """Uses uvloop for the event loop where it is installed (faster gRPC relays)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class GrpcService:
    """One aio gRPC server with health and reflection.

    `register` adds servicers via their generated `add_*_to_server` function; `start` binds
    `address` (port 0 picks a free port, see `port`).
    """

    def __init__(
        self,
        address: str,
        service_names: Iterable[str],
        grace_s: float = 10.0,
        internal_secret: str = "",
        tls: TlsFiles | None = None,
        door: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
        roles: dict[str, frozenset[str]] | None = None,
    ) -> None:
        """`door`: interceptors that run first (the router's authentication); `options`:
        server options that replace the defaults of the same name; `roles`: with mTLS,
        which certificate roles may call which method (RoleCheckInterceptor)."""
        self._tls = tls
        self.address = address
        self.grace_s = grace_s
        interceptors: list[grpc.aio.ServerInterceptor] = [*door, ErrorMappingInterceptor()]
        if internal_secret:
            interceptors.insert(0, SecretCheckInterceptor(internal_secret))
        if roles and tls is not None and tls.enabled:
            interceptors.insert(0, RoleCheckInterceptor(roles))
        chosen = dict(SERVER_OPTIONS) | dict(options)
        self.server = grpc.aio.server(interceptors=interceptors, options=tuple(chosen.items()))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names = list(service_names)
        reflection.enable_server_reflection(
            [
                *self._names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = 0
        self.loopback_port = 0  # a plaintext loopback port of the same server, if asked for
        self._stopping = asyncio.Event()

    def bind(self) -> int:
        """Binds the address (idempotent); returns the port. Servicers may still be added."""
        if self.port:
            return self.port
        if self._tls is not None and self._tls.enabled:
            self.port = self.server.add_secure_port(self.address, self._tls.server_credentials())
        else:
            self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"could not bind {self.address}")
        return self.port

    def bind_loopback(self) -> int:
        """Also serves plaintext on a free loopback port (the router's HTTP door calls its
        own gRPC service there when the public port is TLS). Before `start`."""
        if not self.loopback_port:
            self.loopback_port = self.server.add_insecure_port("127.0.0.1:0")
        return self.loopback_port

    async def start(self) -> int:
        self.bind()
        await self.server.start()
        await self.set_serving(True)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._names]:
            await self.health.set(name, status)

    async def stop(self, grace_s: float | None = None) -> None:
        await self.set_serving(False)
        await self.server.stop(self.grace_s if grace_s is None else grace_s)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_for_stop_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()
