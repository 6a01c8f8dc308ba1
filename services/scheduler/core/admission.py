"""Admission control and graceful degradation: pure rules over the queue's fill and each
model's measured service rate.

- Pressure shedding: a class is refused once the queue is filled past its fraction (low
  first, then medium); a full queue evicts a lower class's request to admit a higher one.
- Retry hints: how long until the queue ahead has drained at the measured rate.
- Deadline estimates: a request whose wait (requests ahead / completions per second) would
  outlast its deadline is refused, or dropped from the queue, instead of served late.
- Degradation: under load, low priority gets a cap on max_tokens; a model with no capacity
  may fall back to a named smaller one when the request allows it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from services.common.errors import ResourceExhausted
from services.scheduler.core.types import Priority

MIN_RATE_SAMPLES = 5  # completions needed before a rate is trusted
MIN_RETRY_MS, MAX_RETRY_MS = 100, 30_000


class Shed(ResourceExhausted):
    """Refused or evicted under load. `reason`: queue_full, pressure or evicted."""

    def __init__(self, message: str, retry_after_ms: int, reason: str) -> None:
        super().__init__(message, retry_after_ms)
        self.reason = reason


def _default_shed() -> dict[Priority, float]:
    return {Priority.HIGH: 1.0, Priority.MEDIUM: 0.9, Priority.LOW: 0.7}


@dataclass(frozen=True)
class AdmissionRules:
    shed_at: Mapping[Priority, float] = field(default_factory=_default_shed)  # queue fill
    full_retry_after_ms: int = 1000  # hint when no service rate is measured yet
    degrade_at: float = 0.5  # queue fill from which degradation rules apply
    low_max_tokens_cap: int = 0  # cap on low priority's max_tokens under load; 0: off
    fallbacks: Mapping[str, str] = field(default_factory=dict)  # model → smaller model

    def sheds(self, priority: Priority, queued: int, capacity: int) -> bool:
        """True when the queue is too full to admit another request of this class."""
        return queued >= self.shed_at.get(priority, 1.0) * capacity

    def max_tokens(self, priority: Priority, max_tokens: int, queued: int, capacity: int) -> int:
        """max_tokens after degradation."""
        if (
            self.low_max_tokens_cap > 0
            and priority is Priority.LOW
            and queued >= self.degrade_at * capacity
        ):
            return min(max_tokens, self.low_max_tokens_cap)
        return max_tokens


class ServiceRate:
    """Events per second for each model over a sliding window: requests completed (or,
    for the autoscaler, admitted), with the durations of those that report one."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self._clock = clock
        self._done: dict[str, deque[float]] = {}
        self._durations: dict[str, deque[tuple[float, float]]] = {}  # (time, seconds)

    def record(self, model_id: str, duration_s: float | None = None) -> None:
        now = self._clock()
        self._done.setdefault(model_id, deque()).append(now)
        if duration_s is not None:
            self._durations.setdefault(model_id, deque()).append((now, duration_s))

    def mean_duration_s(self, model_id: str) -> float | None:
        """Mean duration of the events of the window that reported one; None if none did."""
        durations = self._durations.get(model_id)
        if not durations:
            return None
        now = self._clock()
        while durations and now - durations[0][0] > self.window_s:
            durations.popleft()
        if not durations:
            return None
        return sum(d for _, d in durations) / len(durations)

    def rate(self, model_id: str) -> float | None:
        """Completions per second, or None until enough were seen."""
        times = self._done.get(model_id)
        if not times:
            return None
        now = self._clock()
        while times and now - times[0] > self.window_s:
            times.popleft()
        if len(times) < MIN_RATE_SAMPLES:
            return None
        span = max(now - times[0], 1e-3)
        return len(times) / span

    def wait_s(self, model_id: str, ahead: int) -> float | None:
        """Estimated wait behind `ahead` requests; None when no rate is known."""
        rate = self.rate(model_id)
        return None if rate is None else ahead / rate

    def retry_after_ms(self, model_id: str, ahead: int, default_ms: int) -> int:
        wait = self.wait_s(model_id, ahead)
        if wait is None:
            return default_ms
        return int(min(MAX_RETRY_MS, max(MIN_RETRY_MS, wait * 1000.0)))
