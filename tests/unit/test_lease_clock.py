"""A lease's start-by time is on the scheduler's clock: a worker whose clock runs ahead (or
behind) checks it against the scheduler's, learned when its session is accepted; and a lease
revoked before it was presented is refused for the whole start-by window the scheduler uses
(review finding 10)."""

import pytest
from inference.v1 import scheduler_pb2, types_pb2

from services.common.errors import LeaseEnded, PermissionDenied
from services.common.lease_token import LeaseSigner
from services.gpu_worker.leases import LeaseBook

SIGNER = LeaseSigner.generate()
SCHEDULER_NOW = 1_800_000_000_000


def book(skew_ms: int, start_timeout_ms: int = 10_000) -> tuple[LeaseBook, list[int]]:
    """A worker whose clock reads `skew_ms` past the scheduler's."""
    clock = [SCHEDULER_NOW + skew_ms]
    leases = LeaseBook(lambda: "w1", lambda message: None, clock_ms=lambda: clock[0])
    leases.accepted(
        scheduler_pb2.SessionAccepted(
            lease_public_key=SIGNER.public_key,
            scheduler_time_unix_ms=SCHEDULER_NOW,
            lease_start_timeout_ms=start_timeout_ms,
        )
    )
    return leases, clock


def token(lease_id: str, start_by_ms: int) -> types_pb2.LeaseToken:
    claims = types_pb2.LeaseClaims(
        lease_id=lease_id,
        worker_id="w1",
        request_id="r",
        model_id="m",
        start_by_unix_ms=start_by_ms,
    )
    return SIGNER.sign(claims)


@pytest.mark.parametrize("skew_ms", [10_000, -10_000])
async def test_a_worker_with_a_skewed_clock_takes_a_fresh_lease_and_refuses_a_stale_one(skew_ms):
    leases, _ = book(skew_ms)
    fresh = token("fresh", SCHEDULER_NOW + 5_000)
    assert (await leases.admit(fresh, "fresh", "r", "m")).claims.lease_id == "fresh"
    with pytest.raises(PermissionDenied, match="expired"):
        await leases.admit(token("stale", SCHEDULER_NOW - 1_000), "stale", "r", "m")


async def test_a_lease_revoked_unseen_is_refused_for_the_whole_start_window():
    leases, clock = book(0, start_timeout_ms=120_000)
    leases.revoke("late")  # revoked before its router presented it
    clock[0] += 90_000  # past the old fixed 60 s memory, within the scheduler's window
    leases._forget_old()
    with pytest.raises(LeaseEnded):
        await leases.admit(token("late", SCHEDULER_NOW + 100_000), "late", "r", "m")


async def test_a_lease_granted_before_the_session_began_is_reported_for_adoption():
    """Review finding 16: granted just before a scheduler crash, presented after this worker
    registered with the new one (which did not hear of it): the worker reports it."""
    sent = []
    leases = LeaseBook(lambda: "w1", sent.append, clock_ms=lambda: SCHEDULER_NOW)
    leases.accepted(
        scheduler_pb2.SessionAccepted(
            lease_public_key=SIGNER.public_key,
            scheduler_time_unix_ms=SCHEDULER_NOW,
            lease_start_timeout_ms=10_000,
        )
    )
    await leases.admit(token("old", SCHEDULER_NOW + 8_000), "old", "r", "m")  # granted 2 s ago
    await leases.admit(token("new", SCHEDULER_NOW + 10_000), "new", "r", "m")  # granted now
    assert [m.lease_started.lease_id for m in sent if m.HasField("lease_started")] == ["old"]
