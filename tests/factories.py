"""Shared test doubles: a clock the test moves by hand."""

from __future__ import annotations


class Clock:
    """An injected clock: `now` seconds, moved by assigning or adding to it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
