"""Fairness between tenants: the weighted service each has had within a class (what the
queue orders lanes by), and the tokens served per tenant over a sliding window with Jain's
index of them (what metrics report).

Jain's index J = (Σx)² / (n·Σx²) over the n tenants served in the window: 1 when all got the
same, 1/n when one got everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from services.common.windowed import SlidingWindow
from services.scheduler.core.types import Priority


class FairShare:
    """Weighted service per tenant within each class: tokens granted / weight.

    A tenant that becomes backlogged starts at the least service among those already waiting
    in the class, so idle time banks no credit (start-time fair queueing)."""

    def __init__(self) -> None:
        self._service: dict[Priority, dict[str, float]] = {p: {} for p in Priority}
        # told when a tenant's service falls (a rise is picked up lazily, see RequestQueue)
        self.on_fall: Callable[[Priority, str], None] = lambda priority, tenant: None

    def service(self, priority: Priority, tenant: str) -> float:
        return self._service[priority].get(tenant, 0.0)

    def services(self, priority: Priority) -> dict[str, float]:
        """Each tenant's service in the class (the table itself, read per decision: do not
        change it but through `charge`)."""
        return self._service[priority]

    def joined(self, priority: Priority, tenant: str, backlogged: Iterator[str]) -> None:
        floor = min((self.service(priority, t) for t in backlogged), default=None)
        if floor is not None and floor > self.service(priority, tenant):
            self._service[priority][tenant] = floor

    def charge(self, priority: Priority, tenant: str, weight: float, tokens: float) -> None:
        """Adds `tokens` (negative: a correction) of service, divided by the weight."""
        if not tokens:
            return
        table = self._service[priority]
        table[tenant] = table.get(tenant, 0.0) + tokens / max(weight, 1e-6)
        if tokens < 0:
            self.on_fall(priority, tenant)


def turns_before(backlog: Mapping[str, int], tenant: str, own_ahead: int) -> int:
    """How many requests of a class go before one of `tenant`'s with `own_ahead` of its own
    requests ahead of it, as tenants take turns (equal weights and sizes assumed): those own
    ones, and from every other tenant at most one more than that."""
    limit = own_ahead + 1
    others = sum(min(n, limit) for t, n in backlog.items() if t != tenant)
    return own_ahead + others


class ServedTokens:
    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self._served = SlidingWindow(window_s, clock)

    def add(self, tenant: str, tokens: int) -> None:
        self._served.add(tokens, tenant)

    def per_tenant(self) -> dict[str, int]:
        return {t: int(n) for t, n in self._served.totals_by_key().items()}

    def jain_index(self) -> float | None:
        """None when no tenant was served in the window."""
        return jain_index(list(self.per_tenant().values()))


def jain_index(values: list[float]) -> float | None:
    if not values:
        return None
    squares = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * squares) if squares else 1.0
