"""Tokens served per tenant over a sliding window, and Jain's fairness index of them.

Jain's index J = (Σx)² / (n·Σx²) over the n tenants served in the window: 1 when all got the
same, 1/n when one got everything.
"""

from __future__ import annotations

from collections.abc import Callable

from services.common.windowed import SlidingWindow


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
