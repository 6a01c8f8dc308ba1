"""Per-tenant rate limits: token buckets on requests/s and tokens/s, and a cap on
concurrent streams. Pure: no I/O, time from an injected clock.

Tokens are reserved at admission (prompt estimate + max_tokens) and corrected to the real
count when the request ends, so a tenant is charged for what it used. With `replicas`
routers, each enforces 1/replicas of every rate, burst and cap: together they admit at most
the configured limits, and a tenant whose traffic is spread evenly gets all of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from services.common.errors import ResourceExhausted


@dataclass(frozen=True)
class Limits:
    requests_per_s: float = 0.0  # 0: unlimited
    burst_requests: float = 0.0  # 0: one second's worth
    tokens_per_s: float = 0.0  # 0: unlimited
    burst_tokens: float = 0.0  # 0: one second's worth
    max_concurrent_streams: int = 0  # 0: unlimited

    def share(self, replicas: int) -> Limits:
        """This router's share when `replicas` routers enforce the limits together."""
        if replicas <= 1:
            return self
        return Limits(
            self.requests_per_s / replicas,
            self.burst_requests / replicas,
            self.tokens_per_s / replicas,
            self.burst_tokens / replicas,
            max(1, self.max_concurrent_streams // replicas) if self.max_concurrent_streams else 0,
        )


class TokenBucket:
    """Holds up to `burst` tokens, refilled at `rate` per second."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst or rate
        self._clock = clock
        self._level = self.burst
        self._at = clock()

    def take(self, amount: float) -> float:
        """Takes `amount` if available and returns 0; otherwise takes nothing and returns the
        seconds until it would be. An amount above the burst is let through once full (and
        drives the level negative), so a large request is never refused forever."""
        self._refill()
        needed = min(amount, self.burst)
        if self._level >= needed:
            self._level -= amount
            return 0.0
        return (needed - self._level) / self.rate

    def charge(self, amount: float) -> None:
        """Takes `amount` whether or not it is there (the level may go negative): for use
        already made, which the caller pays back by waiting."""
        self._refill()
        self._level -= amount

    def give_back(self, amount: float) -> None:
        self._refill()
        self._level = min(self.burst, self._level + amount)

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._at) * self.rate)
        self._at = now


class Reservation:
    """What one admitted request holds; `finish` settles it exactly once."""

    def __init__(self, limiter: TenantLimiter, reserved_tokens: int) -> None:
        self._limiter = limiter
        self._reserved = reserved_tokens
        self._open = True

    def finish(self, used_tokens: int | None) -> None:
        """Releases the stream slot; refunds unused reserved tokens (None: keep the charge)."""
        if not self._open:
            return
        self._open = False
        self._limiter.streams -= 1
        if used_tokens is not None and self._limiter.tokens is not None:
            refund = self._reserved - used_tokens
            if refund > 0:
                self._limiter.tokens.give_back(refund)
            elif refund < 0:
                self._limiter.tokens.charge(-refund)


class TenantLimiter:
    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.requests = (
            TokenBucket(limits.requests_per_s, limits.burst_requests, clock)
            if limits.requests_per_s
            else None
        )
        self.tokens = (
            TokenBucket(limits.tokens_per_s, limits.burst_tokens, clock)
            if limits.tokens_per_s
            else None
        )
        self.streams = 0

    def admit(self, tenant: str, tokens: int) -> Reservation:
        """Admits one request reserving `tokens`, or raises ResourceExhausted with a hint."""
        cap = self.limits.max_concurrent_streams
        if cap and self.streams >= cap:
            raise ResourceExhausted(f"tenant {tenant!r} has {cap} streams open (its limit)", 100)
        if self.requests is not None:
            wait = self.requests.take(1)
            if wait:
                raise _over(tenant, "requests/s", wait)
        if self.tokens is not None:
            wait = self.tokens.take(tokens)
            if wait:
                if self.requests is not None:
                    self.requests.give_back(1)
                raise _over(tenant, "tokens/s", wait)
        self.streams += 1
        return Reservation(self, tokens)


class RateLimiter:
    """Limiters per tenant, created on first use from `limits_for(tenant)`."""

    def __init__(
        self, limits_for: Callable[[str], Limits], replicas: int, clock: Callable[[], float]
    ) -> None:
        self._limits_for = limits_for
        self._replicas = replicas
        self._clock = clock
        self._tenants: dict[str, TenantLimiter] = {}

    def admit(self, tenant: str, tokens: int) -> Reservation:
        limiter = self._tenants.get(tenant)
        if limiter is None:
            limits = self._limits_for(tenant).share(self._replicas)
            limiter = self._tenants[tenant] = TenantLimiter(limits, self._clock)
        return limiter.admit(tenant, tokens)


def _over(tenant: str, what: str, wait_s: float) -> ResourceExhausted:
    return ResourceExhausted(
        f"tenant {tenant!r} is over its {what} limit", max(1, math.ceil(wait_s * 1000))
    )
