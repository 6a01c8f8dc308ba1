"""Which heartbeats a worker sends: one whose report changed, and otherwise one in every
`quiet + 1` intervals (the scheduler's `SessionAccepted.quiet_heartbeats`).

The report is what the scheduler decides on: the models' slots and state, health, draining,
the running leases. Device telemetry rides along with whatever heartbeat goes (it moves on
every reading and nothing waits on it); a heartbeat that carries prefix-cache changes always
goes (they are taken from the cache once).
"""

from __future__ import annotations

from inference.v1 import scheduler_pb2


class QuietHeartbeats:
    def __init__(self, quiet: int = 0) -> None:
        self.quiet = quiet
        self._last: bytes | None = None
        self._skipped = 0

    def restart(self, quiet: int) -> None:
        """A new session: its first heartbeat goes whatever it says."""
        self.quiet, self._last, self._skipped = quiet, None, 0

    def worth_sending(self, beat: scheduler_pb2.WorkerHeartbeat, forced: bool = False) -> bool:
        """Whether `beat` goes (`forced`: it goes); what goes is remembered."""
        report = _report(beat)
        unchanged = report is not None and report == self._last
        if unchanged and self._skipped < self.quiet and not forced:
            self._skipped += 1
            return False
        self._last, self._skipped = report, 0
        return True


def _report(beat: scheduler_pb2.WorkerHeartbeat) -> bytes | None:
    """What a decision reads, as bytes; None when it carries prefix-cache changes."""
    if any(r.stored or r.removed or r.full for r in beat.prefix_caches):
        return None
    return scheduler_pb2.WorkerHeartbeat(
        models=beat.models,
        healthy=beat.healthy,
        draining=beat.draining,
        lease_ids=beat.lease_ids,
    ).SerializeToString(deterministic=True)
