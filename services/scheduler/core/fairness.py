"""Tokens served per tenant over a sliding window, and Jain's fairness index of them.

Jain's index J = (Σx)² / (n·Σx²) over the n tenants served in the window: 1 when all got the
same, 1/n when one got everything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class ServedTokens:
    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, str, int]] = deque()

    def add(self, tenant: str, tokens: int) -> None:
        self._events.append((self._clock(), tenant, tokens))

    def per_tenant(self) -> dict[str, int]:
        horizon = self._clock() - self.window_s
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()
        totals: dict[str, int] = {}
        for _, tenant, tokens in self._events:
            totals[tenant] = totals.get(tenant, 0) + tokens
        return totals

    def jain_index(self) -> float | None:
        """None when no tenant was served in the window."""
        return jain_index(list(self.per_tenant().values()))


def jain_index(values: list[float]) -> float | None:
    if not values:
        return None
    squares = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * squares) if squares else 1.0
