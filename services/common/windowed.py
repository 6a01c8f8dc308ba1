"""One sliding window: amounts recorded with their time, kept for the last `window_s`.

The one helper behind every "over the last N seconds" figure: service and arrival rates and
mean durations in the scheduler, tokens served per tenant (Jain's index), and the tokens (or
texts) per second an engine reports. An engine thread may add while another thread reads:
sums work on a snapshot, counts read the length once (O(1): a rate is read per admission).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, float, str]] = deque()  # (time, amount, key)

    def add(self, amount: float = 1.0, key: str = "") -> None:
        now = self._clock()
        self._events.append((now, amount, key))
        self._trim(now)

    def count(self) -> int:
        self._trim(self._clock())
        return len(self._events)

    def total(self) -> float:
        return sum(amount for _, amount, _ in self._recent())

    def totals_by_key(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for _, amount, key in self._recent():
            totals[key] = totals.get(key, 0.0) + amount
        return totals

    def per_second(self) -> float:
        """The window's total divided by its length."""
        return self.total() / self.window_s

    def span_s(self) -> float:
        """Seconds since the oldest event still in the window (0 when it is empty)."""
        now = self._clock()
        self._trim(now)
        try:
            return now - self._events[0][0]
        except IndexError:  # empty, or emptied by another thread just now
            return 0.0

    def _recent(self) -> tuple[tuple[float, float, str], ...]:
        self._trim(self._clock())
        return tuple(self._events)

    def _trim(self, now: float) -> None:
        events = self._events
        try:
            while events and now - events[0][0] > self.window_s:
                events.popleft()
        except IndexError:  # another thread trimmed it first
            pass
