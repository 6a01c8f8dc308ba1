"""When each worker was last heard from, and whose session closed: who is silent too long.

A worker is heard from by its messages (registration, heartbeats). One whose report did not
change may let `quiet_heartbeats` intervals pass without a heartbeat while the scheduler's
transport pings keep its session open, so message silence alone says little for a while;
a session that closed (the pings went unanswered, or the stream ended) says more: its worker
is removed soon after unless it registers again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SilenceBounds:
    suspect_after_s: float  # heard nothing this long: no new lease (its leases kept)
    dead_after_s: float  # heard nothing this long: removed, its leases end LOST
    closed_dead_after_s: float  # its session closed this long ago, no new one: removed


class Liveness:
    """The order in which workers were heard from; when each was is `last_heard`'s (the
    worker's record owns it)."""

    def __init__(self, last_heard: Callable[[str], float]) -> None:
        self._last_heard = last_heard
        self._by_beat: dict[str, None] = {}  # workers, the longest silent first
        self._closed: dict[str, float] = {}  # worker → when its session closed

    def heard(self, worker_id: str) -> None:
        """A heartbeat of the worker arrived (a new session's registration included); its
        lease ends do not count: a worker whose heartbeats stopped is suspect."""
        self._by_beat.pop(worker_id, None)
        self._by_beat[worker_id] = None
        self._closed.pop(worker_id, None)

    def closed(self, worker_id: str, now: float) -> None:
        """The worker's session closed; a later message clears it."""
        if worker_id in self._by_beat and worker_id not in self._closed:
            self._closed[worker_id] = now

    def forget(self, worker_id: str) -> None:
        self._by_beat.pop(worker_id, None)
        self._closed.pop(worker_id, None)

    def silent(self, now: float, bounds: SilenceBounds) -> tuple[list[str], list[str]]:
        """(workers to suspect, workers to remove): from the front of the heartbeat order,
        and those whose session closed too long ago."""
        suspect: list[str] = []
        dead: list[str] = []
        for worker_id in self._by_beat:
            silence = now - self._last_heard(worker_id)
            if silence <= bounds.suspect_after_s:
                break
            (dead if silence > bounds.dead_after_s else suspect).append(worker_id)
        for worker_id, closed_at in self._closed.items():  # closed sessions: few, not ordered
            if now - closed_at > bounds.closed_dead_after_s and worker_id not in dead:
                dead.append(worker_id)
        return suspect, dead
