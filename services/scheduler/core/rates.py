"""Events per second for each model over a sliding window: requests completed (wait
estimates, retry hints) or offered (the autoscaler's arrival rate)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

MIN_RATE_SAMPLES = 5  # completions needed before a rate is trusted
MIN_RETRY_MS, MAX_RETRY_MS = 100, 30_000


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
