"""Admission control and graceful degradation: pure rules over the queue's fill and each
model's measured service rate.

- Pressure shedding: a class is refused once the queue is filled past its fraction (low
  first, then medium); a full queue evicts a lower class's request to admit a higher one.
  Tenants are shed heaviest first: one with fewer requests waiting in its class than
  another is admitted, evicting that tenant's newest when the queue is full.
- Retry hints: how long until the queue ahead has drained at the measured rate.
- Deadline estimates: a request whose wait (requests ahead of it in the fair queue /
  completions per second) would outlast its deadline is refused, with a hint of when it
  might not, or dropped from the queue, instead of served late.
- Degradation: under load, low priority gets a cap on max_tokens; a model with no capacity
  may fall back to a named smaller one when the request allows it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from services.common.config import require
from services.common.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from services.scheduler.core.fairness import turns_before
from services.scheduler.core.leases import LeaseTable
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.rates import EventRates
from services.scheduler.core.types import PendingRequest, Priority


class Shed(ResourceExhausted):
    """Refused or evicted under load. `reason`: queue_full, pressure or evicted."""

    def __init__(self, message: str, retry_after_ms: int, reason: str) -> None:
        super().__init__(message, retry_after_ms)
        self.reason = reason


@dataclass(frozen=True)
class AdmissionRules:
    """`[scheduler.admission]`: who gets into the queue, and how requests are degraded."""

    queue_capacity: int = 1024  # requests waiting at most, every model and class together
    shed_low_at: float = 0.7  # queue fill from which new low requests are refused ...
    shed_medium_at: float = 0.9  # ... and medium ones; high ones fill it, then evict lower
    full_retry_after_ms: int = 1000  # retry hint when no service rate is measured yet
    degrade_at: float = 0.5  # queue fill from which the degradation rules apply
    low_max_tokens_cap: int = 0  # cap on low priority's max_tokens under load; 0: off
    fallbacks: Mapping[str, str] = field(default_factory=dict)  # model → smaller model
    rate_window_s: float = 30.0  # the service rates behind wait estimates cover this long

    def __post_init__(self) -> None:
        require(self.queue_capacity >= 1, "queue_capacity must be >= 1")
        for name in ("shed_low_at", "shed_medium_at", "degrade_at"):
            require(0 < getattr(self, name) <= 1, f"{name} must be in (0, 1]")

    def shed_at(self, priority: Priority) -> float:
        """The queue fill from which new requests of this class are refused."""
        return {Priority.MEDIUM: self.shed_medium_at, Priority.LOW: self.shed_low_at}.get(
            priority, 1.0
        )

    def sheds(self, priority: Priority, queued: int, capacity: int) -> bool:
        """True when the queue is too full to admit another request of this class."""
        return queued >= self.shed_at(priority) * capacity

    def max_tokens(self, priority: Priority, max_tokens: int, queued: int, capacity: int) -> int:
        """max_tokens after degradation."""
        if (
            self.low_max_tokens_cap > 0
            and priority is Priority.LOW
            and queued >= self.degrade_at * capacity
        ):
            return min(max_tokens, self.low_max_tokens_cap)
        return max_tokens


@dataclass(frozen=True)
class Admitted:
    """How a request is admitted: its model (the fallback, when degraded) and max_tokens."""

    model_id: str
    max_tokens: int
    evicted: PendingRequest | None = None  # a lower-class request shed to make room


class AdmissionControl:
    """Applies the rules to a new request against the queue, the lease table's room and the
    measured service rate. `available(model)`: some worker serves or can load it (or one is
    coming); `warm(model)`: some worker has it or is loading it."""

    def __init__(
        self,
        rules: AdmissionRules,
        queue: RequestQueue,
        leases: LeaseTable,
        rate: EventRates,
        available: Callable[[str], bool],
        warm: Callable[[str], bool],
    ) -> None:
        self.rules = rules
        self._queue, self._leases, self._rate = queue, leases, rate
        self._available, self._warm = available, warm

    def admit(
        self,
        model_id: str,
        priority: Priority,
        max_tokens: int,
        deadline: float | None,
        allow_fallback: bool,
        now: float,
        tenant: str = "",
    ) -> Admitted:
        """Raises Unavailable (no worker has or can load the model), ResourceExhausted
        (shed) or DeadlineExceeded (its deadline cannot be met at the measured rate, with
        a hint of when it might be)."""
        if allow_fallback and self._lacks_capacity(model_id, priority, deadline, now):
            fallback = self.rules.fallbacks.get(model_id)
            if fallback and self._available(fallback):
                model_id = fallback
        if not self._available(model_id):
            raise Unavailable(f"no worker is serving model {model_id!r} now")
        behind = self._check_pressure(model_id, priority, tenant)
        if deadline is not None and model_id not in self._leases.room() and self._warm(model_id):
            wait = self._rate.wait_s(model_id, self._ahead(model_id, priority, tenant))
            if wait is not None and now + wait > deadline:
                raise DeadlineExceeded(
                    f"the deadline cannot be met: the estimated wait is {wait:.1f} s",
                    int((now + wait - deadline) * 1000),
                )
        evicted = None
        if len(self._queue) >= self._queue.capacity:
            evicted = self._queue.evict_newest(below=priority, tenant=tenant if behind else None)
            if evicted is None:
                raise self.shed_error(model_id, priority, "queue_full")
        queued, capacity = len(self._queue), self._queue.capacity
        budget = self.rules.max_tokens(priority, max_tokens, queued, capacity)
        return Admitted(model_id, budget, evicted)

    def _check_pressure(self, model_id: str, priority: Priority, tenant: str) -> bool:
        """Sheds a class once the queue is filled past its fraction, heaviest tenants first:
        a tenant with fewer requests waiting in its class than another tenant has is not
        shed (its fair turn comes before theirs). Returns whether it is so behind: in a full
        queue, it may then evict that tenant's newest request of its own class."""
        queued, capacity = len(self._queue), self._queue.capacity
        if queued < capacity and not self.rules.sheds(priority, queued, capacity):
            return False
        backlog = self._queue.tenants_waiting(priority)
        behind = max(backlog.values(), default=0) > backlog.get(tenant, 0) + 1
        if queued < capacity and not behind:
            raise self.shed_error(model_id, priority, "pressure")
        return behind

    def _ahead(self, model_id: str, priority: Priority, tenant: str) -> int:
        """Requests for the model served before a new one of `tenant`: every one of a higher
        class, and in its own class as tenants take turns (the fair queue)."""
        in_class = self._queue.waiting_in(model_id, priority)
        backlog = self._queue.tenants_waiting(priority)
        turns = turns_before(backlog, tenant, backlog.get(tenant, 0))
        return self._queue.ahead_of(model_id, priority) - in_class + min(in_class, turns)

    def retry_after_ms(self, model_id: str) -> int:
        ahead = self._queue.ahead_of(model_id, Priority.LOW)
        return self._rate.retry_after_ms(model_id, ahead, self.rules.full_retry_after_ms)

    def shed_error(self, model_id: str, priority: Priority, reason: str) -> Shed:
        why = "queue full" if reason == "queue_full" else f"shedding {priority.name.lower()} load"
        return Shed(
            f"{why}: {len(self._queue)} of {self._queue.capacity} queue places taken "
            f"({priority.name.lower()} priority)",
            self.retry_after_ms(model_id),
            reason,
        )

    def _lacks_capacity(
        self, model_id: str, priority: Priority, deadline: float | None, now: float
    ) -> bool:
        """No worker can take the model, or it has no room and a long queue (past the
        degradation threshold, or longer than the deadline allows)."""
        if not self._available(model_id):
            return True
        if model_id in self._leases.room():
            return False
        if len(self._queue) >= self.rules.degrade_at * self._queue.capacity:
            return True
        wait = self._rate.wait_s(model_id, self._queue.ahead_of(model_id, priority))
        return deadline is not None and wait is not None and now + wait > deadline
