"""Events per second for each model over a sliding window: requests completed (wait
estimates, retry hints) or offered (the autoscaler's arrival rate)."""

from __future__ import annotations

from collections.abc import Callable

from services.common.windowed import SlidingWindow

MIN_RATE_SAMPLES = 5  # events needed before a rate is trusted
MIN_RETRY_MS, MAX_RETRY_MS = 100, 30_000


class EventRates:
    """Per model: events per second over the window, and the mean duration of the events
    that report one."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, SlidingWindow] = {}
        self._durations: dict[str, SlidingWindow] = {}

    def record(self, model_id: str, duration_s: float | None = None) -> None:
        self._window(self._events, model_id).add()
        if duration_s is not None:
            self._window(self._durations, model_id).add(duration_s)

    def mean_duration_s(self, model_id: str) -> float | None:
        """Mean duration of the events of the window that reported one; None if none did."""
        durations = self._durations.get(model_id)
        count = durations.count() if durations is not None else 0
        return durations.total() / count if count else None

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

    def _window(self, windows: dict[str, SlidingWindow], model_id: str) -> SlidingWindow:
        window = windows.get(model_id)
        if window is None:
            window = windows[model_id] = SlidingWindow(self.window_s, self._clock)
        return window
