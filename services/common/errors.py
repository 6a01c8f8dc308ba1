"""Domain errors shared by every service.

Cores and servicers raise these; `services.common.status` is the one place that maps them to
gRPC status codes. Nothing here imports grpc.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error a caller may see. `message` is safe to show to clients."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """Malformed request, bad field value, prompt too long."""


class NotFound(ServiceError):
    """Unknown model."""


class Unauthenticated(ServiceError):
    """Missing or wrong API key."""


class PermissionDenied(ServiceError):
    """The tenant may not use this model or ask for this priority."""


class ResourceExhausted(ServiceError):
    """Over a rate limit, queue full, or shed under load. The caller may retry later."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = max(0, int(retry_after_ms))


class Unavailable(ServiceError):
    """No worker can serve the request now, or a neighbour service is down."""


class DeadlineExceeded(ServiceError):
    """The request's deadline passed in the queue or in flight."""


class Cancelled(ServiceError):
    """The client cancelled the request."""
