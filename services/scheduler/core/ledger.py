"""What each lease really cost: fairness charged at grant, corrected when the lease ends.

At grant, fairness charges the request's estimate (`PendingRequest.charge_estimate`: its
prompt unless an earlier lease paid for it, plus the tokens it may still generate), so that a
tenant's backlog is weighed before its leases end. When the lease ends, the charge is corrected
to what the worker reports: the prompt (first lease only) and the tokens generated under it.
A lease that ends unreported (its worker died, or it expired unstarted) is corrected to its
prompt alone; the tokens it streamed are charged when the router resubmits the request with
their count, or when its worker, cut off a while, reports its end late (`settle_late`),
whichever comes first. So a preempted or resumed request is charged once for its prompt and
once for each token it was sent, never twice.
"""

from __future__ import annotations

from collections import OrderedDict

from services.scheduler.core.changes import EndedLease
from services.scheduler.core.fairness import FairShare
from services.scheduler.core.types import Lease, Outcome, PendingRequest, Resubmission, Usage

REMEMBERED_ENDS = 16_384  # recent lease ends kept to settle resubmissions


class Ledger:
    def __init__(self, fair: FairShare) -> None:
        self._fair = fair
        # lease → None once its end was reported (by its worker, or a router's resubmission),
        # else the lease, whose worker may report it late; the oldest end first (an
        # OrderedDict: dropping the oldest is O(1), where a dict's first key is found past
        # every key deleted before it)
        self._ends: OrderedDict[str, Lease | None] = OrderedDict()

    def settle(self, lease: Lease, usage: Usage | None) -> int:
        """Corrects the grant-time charge of an ended lease; returns the tokens it generated
        as far as is known (0 when unreported)."""
        prompt = 0 if lease.resumed else _prompt_of(lease, usage)
        generated = usage.completion_tokens if usage is not None else 0
        correction = prompt + generated - lease.charged  # what it took, less the estimate
        self._fair.charge(lease.priority, lease.tenant_id, lease.tenant_weight, correction)
        self._remember(lease.lease_id, None if usage is not None else lease)
        return generated

    def settle_resubmitted(self, request: PendingRequest, again: Resubmission) -> list[EndedLease]:
        """Charges the tokens a request streamed under a lease (`again.previous_lease_id`)
        whose end no worker reported (or that this scheduler never knew: granted before a
        restart). Returns that lease's end as the router tells it, or nothing when the
        worker's report already paid for them (or the lease is unknown here: charged all the
        same)."""
        lease_id, tokens = again.previous_lease_id, again.previous_lease_tokens
        unreported = self._ends.get(lease_id)
        if lease_id in self._ends and unreported is None:
            return []
        self._remember(lease_id, None)
        self._fair.charge(request.priority, request.tenant_id, request.tenant_weight, tokens)
        if unreported is None:
            return []
        return [EndedLease(unreported, again.previous_outcome, Usage(completion_tokens=tokens))]

    def settle_late(self, lease_id: str, outcome: Outcome, usage: Usage | None) -> list[EndedLease]:
        """A worker reports (`usage`) the end of a lease that ended here unreported (declared
        lost while its host was cut off): charges the tokens it generated. Returns that end, or
        nothing when its end was reported already (by the worker, or a router's resubmission),
        is forgotten, or this is no worker's report."""
        lease = self._ends.get(lease_id)
        if lease is None or usage is None:
            return []
        self._ends[lease_id] = None
        self._fair.charge(
            lease.priority, lease.tenant_id, lease.tenant_weight, usage.completion_tokens
        )
        return [EndedLease(lease, outcome, usage)]

    def ended(self, lease_id: str) -> bool:
        """The lease ended here, recently."""
        return lease_id in self._ends

    def _remember(self, lease_id: str, unreported: Lease | None) -> None:
        ends = self._ends
        ends.pop(lease_id, None)  # a lease ends once: this is for a resubmission after it
        ends[lease_id] = unreported
        if len(ends) > REMEMBERED_ENDS:
            ends.popitem(last=False)


def _prompt_of(lease: Lease, usage: Usage | None) -> int:
    """The prompt the worker ran, or the estimate the lease was granted with."""
    if usage is not None and usage.prompt_tokens:
        return usage.prompt_tokens
    return max(0, lease.kv_tokens - lease.max_tokens)
