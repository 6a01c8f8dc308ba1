"""The leases this worker runs: verified before any work starts, reported when they end.

A router presents the lease the scheduler granted (`ExecuteRequest.lease`). The book checks its
signature (with the keys the scheduler hands over in its session), that it names this worker
and this request, that it is presented before its start-by time, and that it was not used
before. While the work runs the lease is *running*: heartbeats list it, a re-registration
carries its claims (a scheduler that restarted rebuilds its lease table from them), and the
scheduler may revoke it (preemption). When it ends, how it ended and the tokens it took go to
the scheduler at once (`LeaseEnded`), so each lease's end is reported exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from inference.v1 import scheduler_pb2, types_pb2

from services.common.errors import LeaseEnded, PermissionDenied
from services.common.lease_token import LeaseRefused, LeaseVerifier, check_claims
from services.common.status import PREEMPTED

KEY_WAIT_S = 2.0  # a lease signed with a key not yet received waits this long for it
FORGET_REVOKED_MS = 60_000  # at least: a lease revoked unseen is refused this long after


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Tally:
    """What one lease's work produced, for its end report."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_ms: float = 0.0


@dataclass
class RunningLease:
    claims: types_pb2.LeaseClaims
    tally: Tally = field(default_factory=Tally)
    revoked: bool = False
    on_revoke: Callable[[], None] | None = None  # stops the work; set by whoever runs it

    def watch(self, on_revoke: Callable[[], None]) -> None:
        """Calls `on_revoke` when the lease is revoked (at once if it already was)."""
        self.on_revoke = on_revoke
        if self.revoked:
            on_revoke()


class LeaseBook:
    def __init__(
        self,
        worker_id: Callable[[], str],
        report: Callable[[scheduler_pb2.WorkerSessionRequest], None],
        clock_ms: Callable[[], int] = _now_ms,
        pinned_keys: Iterable[bytes] = (),
    ) -> None:
        self._worker_id = worker_id
        self._report = report
        self._clock_ms = clock_ms
        self.verifier = LeaseVerifier(pinned_keys)
        self._key_arrived = asyncio.Event()
        self._running: dict[str, RunningLease] = {}
        self._used: dict[str, int] = {}  # lease → its start-by time: no second use before
        self._revoked_unseen: dict[str, int] = {}  # revoked before presented → forget after
        self._offset_ms = 0  # the scheduler's clock minus ours (start-by is on its clock)
        self._session_began_ms = 0  # when the current session was accepted (its clock)
        self._start_window_ms = 0  # a lease's start-by is its grant plus this
        self._forget_revoked_ms = FORGET_REVOKED_MS

    def accepted(self, session: scheduler_pb2.SessionAccepted) -> None:
        """A scheduler accepted this worker's session: its key, its clock, its start-by
        window. Raises LeaseKeyError for a key that is not pinned here. The offset is
        measured as its message arrives, so it errs by the message's transit, on the side of
        accepting a lease (the scheduler also expires unpresented leases and revokes them)."""
        self.add_key(session.lease_public_key)
        if session.scheduler_time_unix_ms:
            self._offset_ms = session.scheduler_time_unix_ms - self._clock_ms()
        self._session_began_ms = session.scheduler_time_unix_ms
        self._start_window_ms = session.lease_start_timeout_ms
        window = session.lease_start_timeout_ms + FORGET_REVOKED_MS
        self._forget_revoked_ms = max(self._forget_revoked_ms, window)

    def add_key(self, key: bytes) -> None:
        self.verifier.add_key(key)
        self._key_arrived.set()
        self._key_arrived = asyncio.Event()

    def _scheduler_now_ms(self) -> int:
        return self._clock_ms() + self._offset_ms

    async def admit(
        self, token: types_pb2.LeaseToken, lease_id: str, request_id: str, model_id: str
    ) -> RunningLease:
        """The running lease for a presented token. Raises PermissionDenied (no valid lease
        for this worker and request) or LeaseEnded (revoked before it was presented)."""
        try:
            claims = await self._claims(token)
            check_claims(claims, self._worker_id(), request_id, model_id, self._scheduler_now_ms())
            if claims.lease_id != lease_id or claims.lease_id in self._used:
                raise LeaseRefused(f"lease {claims.lease_id} was presented already")
        except LeaseRefused as refused:
            raise PermissionDenied(str(refused)) from None
        self._forget_old()
        self._used[claims.lease_id] = claims.start_by_unix_ms
        if self._revoked_unseen.pop(claims.lease_id, None) is not None:
            raise LeaseEnded(f"lease {claims.lease_id} was revoked", PREEMPTED)
        running = RunningLease(claims)
        self._running[claims.lease_id] = running
        if claims.start_by_unix_ms - self._start_window_ms < self._session_began_ms:
            # granted before this session began: a scheduler that restarted since does not
            # know it (this worker's registration did not list it); it adopts it now
            self._report(scheduler_pb2.WorkerSessionRequest(lease_started=claims))
        return running

    def end(self, lease: RunningLease, outcome: int) -> None:
        """Reports the lease's end to the scheduler (once)."""
        if self._running.pop(lease.claims.lease_id, None) is None:
            return
        self._send_end(lease.claims.lease_id, outcome, lease.tally)

    def revoke(self, lease_id: str) -> None:
        """The scheduler ends a lease early: its work stops (the router resumes it); one not
        presented yet is refused when it is, and reported ended now."""
        running = self._running.get(lease_id)
        if running is not None:
            running.revoked = True
            if running.on_revoke is not None:
                running.on_revoke()
        elif lease_id not in self._used:
            self._revoked_unseen[lease_id] = self._scheduler_now_ms() + self._forget_revoked_ms
            self._send_end(lease_id, types_pb2.LEASE_OUTCOME_PREEMPTED, Tally())

    def running_claims(self) -> list[types_pb2.LeaseClaims]:
        return [lease.claims for lease in self._running.values()]

    def running_ids(self) -> list[str]:
        return list(self._running)

    async def _claims(self, token: types_pb2.LeaseToken) -> types_pb2.LeaseClaims:
        """Verifies the token, waiting a little for a key the scheduler is still sending
        (a lease granted the moment a session began, or after a scheduler restart)."""
        try:
            return self.verifier.claims(token)
        except LeaseRefused:
            waiting = self._key_arrived
            peek = types_pb2.LeaseClaims()
            try:
                peek.ParseFromString(token.claims)
            except Exception:  # noqa: BLE001 - malformed: refused below
                peek.key_id = ""
            if not peek.key_id or self.verifier.knows(peek.key_id):
                raise
            try:
                await asyncio.wait_for(waiting.wait(), KEY_WAIT_S)
            except TimeoutError:
                raise LeaseRefused("lease not signed by this worker's scheduler") from None
            return self.verifier.claims(token)

    def _send_end(self, lease_id: str, outcome: int, tally: Tally) -> None:
        self._report(
            scheduler_pb2.WorkerSessionRequest(
                lease_ended=scheduler_pb2.LeaseEnded(
                    lease_id=lease_id,
                    outcome=outcome,
                    prompt_tokens=tally.prompt_tokens,
                    completion_tokens=tally.completion_tokens,
                    time_to_first_token_ms=tally.first_token_ms,
                )
            )
        )

    def _forget_old(self) -> None:
        """Drops used and revoked ids past their start-by time (they are refused as expired
        anyway), so the book stays as small as the leases of the last few seconds."""
        now = self._scheduler_now_ms()
        for table in (self._used, self._revoked_unseen):
            while table:  # in insertion order, which is (about) start-by order
                lease_id, start_by = next(iter(table.items()))
                if start_by >= now:
                    break
                del table[lease_id]
