"""What one change of the core decided, for one caller to apply (vLLM's SchedulerOutput).

Every mutating SchedulerCore call returns a `Changes`; the core itself has already run the
follow-ups the change calls for (shedding, orphans, serving the queue, the preemption check,
model placement), so nothing is left for the caller to remember. The coordinator applies it
in one function: grants resolve the requests waiting for them, failures reach their callers
with the error named here, ended leases are reported once, commands go to their workers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from services.common.errors import DeadlineExceeded, ServiceError, Unavailable
from services.scheduler.core.admission import Shed
from services.scheduler.core.autoscaling import ScalingDecision
from services.scheduler.core.model_placement import LoadModel, UnloadModel
from services.scheduler.core.types import Lease, Outcome, PendingRequest, RevokeLease, Usage

Command = LoadModel | UnloadModel | RevokeLease


class FailReason(enum.Enum):
    """Why the core took a waiting request out of the queue (a metric label)."""

    EVICTED = "evicted"  # shed for a higher class
    DROPPED_LATE = "dropped_late"  # its deadline cannot be met at the service rate
    COLD_EXPIRED = "cold_expired"  # its model got no worker in time
    ORPHANED = "orphaned"  # no worker serves or can load its model any more


@dataclass(frozen=True)
class Failure:
    request: PendingRequest
    reason: FailReason
    error: ServiceError  # what its caller gets


@dataclass(slots=True, init=False)  # built per decision; a written constructor: see Lease
class EndedLease:
    lease: Lease
    outcome: Outcome
    usage: Usage | None  # what its worker reported, or its router saw; None: nobody said

    def __init__(self, lease: Lease, outcome: Outcome, usage: Usage | None = None) -> None:
        self.lease, self.outcome, self.usage = lease, outcome, usage


@dataclass(init=False)  # built per change; a written constructor: see Lease
class Changes:
    admitted: PendingRequest | None  # the request a submit queued, as admitted
    granted: list[tuple[PendingRequest, Lease]]
    failed: list[Failure]
    ended: list[EndedLease]  # each lease's end, once
    commands: list[Command]
    removed_workers: list[str]  # their sessions must end
    scaling: list[ScalingDecision]  # this tick's decisions
    adopted: list[Lease]  # leases a worker runs that this scheduler did not grant: now held
    # leases that had ended here unreported, settled later by their worker's report or their
    # router's resubmission (the tokens it says); their end was counted when they ended
    reconciled: list[EndedLease]

    def __init__(self) -> None:
        self.admitted = None
        self.granted, self.failed, self.ended, self.commands = [], [], [], []
        self.removed_workers, self.scaling, self.adopted = [], [], []
        self.reconciled = []

    def __bool__(self) -> bool:
        return bool(
            self.admitted
            or self.granted
            or self.failed
            or self.ended
            or self.commands
            or self.removed_workers
            or self.scaling
            or self.adopted
            or self.reconciled
        )

    def fail(
        self, requests: list[PendingRequest], reason: FailReason, retry_after_ms: int = 0
    ) -> None:
        """Records `requests` as failed for `reason`, each with the error its caller gets."""
        self.failed.extend(Failure(r, reason, _error(reason, r, retry_after_ms)) for r in requests)

    def leases_granted(self) -> list[Lease]:
        return [lease for _, lease in self.granted]


def _error(reason: FailReason, request: PendingRequest, retry_after_ms: int) -> ServiceError:
    model = request.model_id
    if reason is FailReason.EVICTED:
        message = "shed from the queue to admit a higher-priority request or a lighter tenant's"
        return Shed(message, retry_after_ms, "evicted")
    if reason is FailReason.DROPPED_LATE:
        return DeadlineExceeded(
            "dropped from the queue: its deadline cannot be met at the current service rate",
            retry_after_ms,
        )
    if reason is FailReason.COLD_EXPIRED:
        return Unavailable(f"no worker for model {model!r} started in time; retry later")
    return Unavailable(f"no worker is serving model {model!r} now")
