"""Events per second for each model over a sliding window: requests completed (wait
estimates, retry hints) or offered (the autoscaler's arrival rate)."""

from __future__ import annotations

from collections.abc import Callable

from services.common.windowed import SlidingWindow

MIN_RATE_SAMPLES = 5  # events needed before a rate is trusted
MIN_RETRY_MS, MAX_RETRY_MS = 100, 30_000


class EventRates:
    """Per model: events per second over the window, and the mean duration of its events
    (an event recorded without a duration counts as 0 s: completions record one each,
    arrivals none)."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, SlidingWindow] = {}  # amounts: the durations

    def record(self, model_id: str, duration_s: float = 0.0) -> None:
        window = self._events.get(model_id)
        if window is None:
            window = self._events[model_id] = SlidingWindow(self.window_s, self._clock)
        window.add(duration_s)

    def mean_duration_s(self, model_id: str) -> float | None:
        """Mean duration of the window's events; None if it has none."""
        events = self._events.get(model_id)
        if events is None or not events.count():
            return None
        return events.total() / events.count()

    def rate(self, model_id: str) -> float | None:
        """Events per second, or None until enough were seen."""
        events = self._events.get(model_id)
        if events is None or events.count() < MIN_RATE_SAMPLES:
            return None
        return events.count() / max(events.span_s(), 1e-3)

    def wait_s(self, model_id: str, ahead: int) -> float | None:
        """Estimated wait behind `ahead` requests; None when no rate is known."""
        rate = self.rate(model_id)
        return None if rate is None else ahead / rate

    def retry_after_ms(self, model_id: str, ahead: int, default_ms: int) -> int:
        wait = self.wait_s(model_id, ahead)
        if wait is None:
            return default_ms
        return int(min(MAX_RETRY_MS, max(MIN_RETRY_MS, wait * 1000.0)))
