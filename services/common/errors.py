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
    """No worker can serve the request now, or a neighbour service is down. `retry_after_ms`:
    when to try again, if known (sent as retry-after-ms)."""

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = max(0, int(retry_after_ms))


class DeadlineExceeded(ServiceError):
    """The request's deadline passed in the queue or in flight, or cannot be met: then
    `retry_after_ms` says when it might be (0: no hint)."""

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = max(0, int(retry_after_ms))


class Cancelled(ServiceError):
    """The client cancelled the request."""


class LeaseEnded(ServiceError):
    """The request's lease ended before its stream did (revoked to preempt it): the holder
    resumes it on a new lease. Never reaches a client. `outcome`: why, e.g. "preempted"."""

    def __init__(self, message: str, outcome: str) -> None:
        super().__init__(message)
        self.outcome = outcome
