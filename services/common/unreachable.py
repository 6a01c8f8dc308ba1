"""The workers a router could not reach lately, named in its tickets.

A network can fail one way: the scheduler still hears a worker while a router's calls to it
go unanswered. The scheduler would keep granting that router leases there, each one failing.
So the router remembers a worker whose call failed without an answer (UNAVAILABLE and none of
our status trailers: the connection, not the worker, failed), for UNREACHABLE_S after the
last failure or until a call to it completes, and every ticket it sends names those workers:
the scheduler places the request elsewhere while another worker has room.
"""

from __future__ import annotations

import time
from collections.abc import Callable

UNREACHABLE_S = 10.0  # a worker unanswered this long ago is tried again
MAX_UNREACHABLE = 64  # names a ticket may carry (the scheduler refuses more)


class UnreachableWorkers:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}  # worker → until when it is avoided

    def failed(self, worker_id: str) -> None:
        self._until[worker_id] = self._clock() + UNREACHABLE_S

    def answered(self, worker_id: str) -> None:
        if self._until:
            self._until.pop(worker_id, None)

    def now(self) -> list[str]:
        """The workers to avoid now, the most recently failed first, at most the bound."""
        if not self._until:
            return []
        now = self._clock()
        for worker_id in [w for w, until in self._until.items() if until <= now]:
            del self._until[worker_id]
        latest = sorted(self._until, key=self._until.__getitem__, reverse=True)
        return latest[:MAX_UNREACHABLE]
