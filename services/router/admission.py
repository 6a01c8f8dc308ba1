"""The router's door: who is calling, what they may do, and whether they are within their
limits. Combines the authenticator, the tenant policies and the rate limiter."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from services.common import tracing
from services.common.errors import ResourceExhausted
from services.router.auth import ANONYMOUS, Authenticator
from services.router.config import RouterConfig
from services.router.metrics import RouterMetrics
from services.router.ratelimit import RateLimiter, Reservation
from services.router.tenants import TenantPolicies

TRACER = tracing.tracer("services.router")


class Admission:
    def __init__(self, config: RouterConfig, metrics: RouterMetrics) -> None:
        self._auth = Authenticator(config.tenants, config.allow_anonymous)
        self.policies = TenantPolicies(config)
        self._limiter = RateLimiter(self.policies.limits, config.replicas, time.monotonic)
        self._metrics = metrics
        # every known tenant's series exists from the start, at zero: no empty dashboards
        known = [t.tenant_id for t in config.tenants]
        for tenant in [*known, *([ANONYMOUS] if config.allow_anonymous else [])]:
            metrics.rate_limited.labels(tenant)

    def tenant(self, metadata: Iterable[tuple[str, Any]]) -> str:
        """The caller's tenant. Raises Unauthenticated. (Called by the door's interceptor,
        before the call's own span: the span joins the caller's trace.)"""
        metadata = tuple(metadata)
        with TRACER.start_as_current_span(
            "router.authenticate", context=tracing.incoming_context(metadata)
        ) as span:
            tenant = self._auth.tenant_for(metadata)
            span.set_attribute("inference.tenant", tenant)
            return tenant

    def caller_of(self, metadata: Iterable[tuple[str, Any]]) -> str:
        """The caller's tenant, with no span: the HTTP door's check before it reads a body
        (the gRPC door checks again, inside the request's trace). Raises Unauthenticated."""
        return self._auth.tenant_for(tuple(metadata))

    def check(self, tenant: str, model_id: str, priority: int) -> None:
        """Raises PermissionDenied for a model or priority the tenant may not use."""
        self.policies.check(tenant, model_id, priority)

    def reserve(self, tenant: str, tokens: int) -> Reservation:
        """Admits a request reserving `tokens`, or raises ResourceExhausted with a hint."""
        with TRACER.start_as_current_span(
            "router.rate_limit",
            attributes={
                "inference.tenant": tenant,
                "inference.reserved_tokens": tokens,
            },
        ):
            try:
                return self._limiter.admit(tenant, tokens)
            except ResourceExhausted:
                self._metrics.rate_limited.labels(tenant).inc()
                raise
