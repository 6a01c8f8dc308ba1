"""Protobuf ↔ scheduler domain objects. Protobuf types stop here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inference.v1 import scheduler_pb2, types_pb2

from services.common import lease_token
from services.common.catalog import ModelSpec
from services.scheduler.coordinator import Grant, Snapshot
from services.scheduler.core.autoscaling import ScalingBounds, ScalingDecision
from services.scheduler.core.model_placement import LoadModel, UnloadModel
from services.scheduler.core.prefix_index import CacheReport
from services.scheduler.core.types import (
    Lease,
    ModelCatalogEntry,
    ModelSlots,
    ModelView,
    Outcome,
    Priority,
    Resubmission,
    RevokeLease,
    Ticket,
    Usage,
    WorkerRecord,
    WorkerState,
)

_KIND_NAMES = {
    types_pb2.MODEL_KIND_GENERATIVE: "generative",
    types_pb2.MODEL_KIND_EMBEDDING: "embedding",
}
_KIND_VALUES = {name: value for value, name in _KIND_NAMES.items()}
_WORKER_STATES = {
    WorkerState.READY: types_pb2.WORKER_STATE_READY,
    WorkerState.DRAINING: types_pb2.WORKER_STATE_DRAINING,
    WorkerState.UNHEALTHY: types_pb2.WORKER_STATE_UNHEALTHY,
}


def priority(value: int) -> Priority:
    """PRIORITY_UNSPECIFIED (and any value the router let through) means medium."""
    return Priority(value) if value in (1, 2, 3) else Priority.MEDIUM


def entry_from_spec(spec: ModelSpec) -> ModelCatalogEntry:
    return ModelCatalogEntry(
        model_id=spec.model_id,
        simulated=spec.simulated,
        max_context_tokens=spec.max_context_tokens,
        max_output_tokens=spec.max_output_tokens,
        default_max_tokens=spec.default_max_tokens,
        kind=spec.kind,
        description=spec.description,
        memory_bytes=spec.weights_bytes,
        max_slots=spec.max_slots,
    )


def entry_from_proto(info: types_pb2.ModelInfo) -> ModelCatalogEntry:
    return ModelCatalogEntry(
        model_id=info.model_id,
        simulated=info.simulated,
        max_context_tokens=info.max_context_tokens,
        max_output_tokens=info.max_output_tokens,
        default_max_tokens=info.default_max_tokens,
        kind=_KIND_NAMES.get(info.kind, "generative"),
        description=info.description,
    )


def slots_from_proto(model: types_pb2.WorkerModel) -> ModelSlots:
    return ModelSlots(
        model_id=model.info.model_id,
        max_slots=model.max_slots,
        ready=model.state == types_pb2.MODEL_STATE_READY,
        kv_capacity=model.kv_cache_tokens_capacity,
        memory_bytes=model.memory_bytes,
    )


def worker_command(
    command: LoadModel | UnloadModel | RevokeLease,
) -> scheduler_pb2.WorkerSessionResponse:
    """A command for a worker as the WorkerSession message that carries it."""
    if isinstance(command, LoadModel):
        return scheduler_pb2.WorkerSessionResponse(
            load_model=scheduler_pb2.LoadModelCommand(model_id=command.model_id)
        )
    if isinstance(command, RevokeLease):
        return scheduler_pb2.WorkerSessionResponse(
            revoke_lease=scheduler_pb2.RevokeLeaseCommand(
                lease_id=command.lease_id, reason=command.reason
            )
        )
    return scheduler_pb2.WorkerSessionResponse(
        unload_model=scheduler_pb2.UnloadModelCommand(model_id=command.model_id)
    )


def outcome(value: int) -> Outcome:
    """A LeaseOutcome; unspecified (or unknown) counts as a failure."""
    name = types_pb2.LeaseOutcome.Name(value) if value in types_pb2.LeaseOutcome.values() else ""
    return _OUTCOMES.get(name.removeprefix("LEASE_OUTCOME_").lower(), Outcome.FAILED)


_OUTCOMES = {o.value: o for o in Outcome}


def resubmission(request: scheduler_pb2.AcquireRequest) -> Resubmission | None:
    if not request.HasField("resubmission"):
        return None
    r = request.resubmission
    return Resubmission(
        waited_s=max(0.0, r.waited_ms / 1000.0),
        generated_tokens=r.generated_tokens,
        previous_lease_id=r.previous_lease_id,
        previous_worker_id=r.previous_worker_id,
        previous_outcome=outcome(r.previous_outcome),
        previous_lease_tokens=r.previous_lease_tokens,
    )


def ticket(request: scheduler_pb2.AcquireRequest) -> Ticket:
    """The request as the core queues it, its id scoped by its tenant."""
    return Ticket(
        scoped_id(request.tenant_id, request.request_id),
        request.model_id,
        priority(request.priority),
        request.tenant_id,
        prompt_tokens=request.prompt_tokens,
        max_tokens=request.max_tokens,
        tenant_weight=request.tenant_weight or 1.0,
        affinity_key=request.affinity_key,
        allow_fallback=request.allow_fallback,
        prefix_blocks=tuple(request.prefix_blocks),
        unreachable=tuple(request.unreachable_workers),
    )


def cache_reports(reports: Iterable[types_pb2.PrefixCacheReport]) -> list[CacheReport]:
    """A worker's prefix-cache reports as the core's index takes them."""
    return [CacheReport(r.model_id, tuple(r.stored), tuple(r.removed), r.full) for r in reports]


def lease_end(ended: scheduler_pb2.LeaseEnded) -> tuple[str, Outcome, Usage]:
    """A worker's report of a lease's end: the lease, how it ended, what it used."""
    return ended.lease_id, outcome(ended.outcome), usage(ended)


def usage(ended: scheduler_pb2.LeaseEnded) -> Usage:
    return Usage(ended.prompt_tokens, ended.completion_tokens, ended.time_to_first_token_ms)


def scoped_id(tenant_id: str, request_id: str) -> str:
    """A request's id inside the scheduler: scoped by its tenant, so that no tenant can
    collide with another's ids, or learn of them by colliding ("\x1f" is in no id)."""
    return f"{tenant_id}\x1f{request_id}"


def lease_grant(
    grant: Grant, request_id: str, signer: lease_token.LeaseSigner, start_by_unix_ms: int
) -> scheduler_pb2.LeaseGrant:
    """The grant as the router receives it, with the lease signed for its worker and for
    `request_id` (the router's id; the scheduler scopes ids by tenant)."""
    lease, admitted = grant.lease, grant.request
    claims = types_pb2.LeaseClaims(
        lease_id=lease.lease_id,
        worker_id=lease.worker_id,
        request_id=request_id,
        model_id=lease.model_id,
        tenant_id=lease.tenant_id,
        priority=int(lease.priority),
        max_tokens=admitted.max_tokens,
        kv_tokens=lease.kv_tokens,
        start_by_unix_ms=start_by_unix_ms,
        charged_tokens=lease.charged,
        resumed=lease.resumed,
        tenant_weight=lease.tenant_weight,
    )
    return scheduler_pb2.LeaseGrant(
        lease_id=lease.lease_id,
        worker_id=lease.worker_id,
        worker_address=lease.worker_address,
        gpu_id=lease.gpu_id,
        model_id=lease.model_id,
        max_tokens=admitted.max_tokens,
        queue_time_ms=grant.queue_time_ms,
        token=signer.sign(claims),
    )


def running_lease(claims: types_pb2.LeaseClaims, address: str, gpu_id: str, now: float) -> Lease:
    """A lease a worker reports running, as a scheduler (maybe a new one) holds it. Its
    fairness charge is not carried over: the ledger charges what it really costs at its end."""
    return Lease(
        lease_id=claims.lease_id,
        request_id=scoped_id(claims.tenant_id, claims.request_id),
        worker_id=claims.worker_id,
        worker_address=address,
        gpu_id=gpu_id,
        model_id=claims.model_id,
        granted_at=now,
        priority=priority(claims.priority),
        tenant_id=claims.tenant_id,
        kv_tokens=claims.kv_tokens,
        tenant_weight=claims.tenant_weight or 1.0,
        resumed=claims.resumed,
        max_tokens=claims.max_tokens,
    )


def worker_state(heartbeat: scheduler_pb2.WorkerHeartbeat) -> WorkerState:
    if heartbeat.draining:
        return WorkerState.DRAINING
    return WorkerState.READY if heartbeat.healthy else WorkerState.UNHEALTHY


def model_info(view: ModelView) -> types_pb2.ModelInfo:
    entry = view.entry
    return types_pb2.ModelInfo(
        model_id=entry.model_id,
        kind=_KIND_VALUES.get(entry.kind, types_pb2.MODEL_KIND_GENERATIVE),
        simulated=entry.simulated,
        ready=view.ready_workers > 0,
        ready_workers=view.ready_workers,
        max_context_tokens=entry.max_context_tokens,
        max_output_tokens=entry.max_output_tokens,
        default_max_tokens=entry.default_max_tokens,
        description=entry.description,
    )


def worker_status(
    record: WorkerRecord, session: Any, now: float, cached: dict[tuple[str, str], int]
) -> types_pb2.WorkerStatus:
    """The worker's lease-table view, with the engine figures of its last heartbeat and the
    prompt blocks the prefix index holds for each of its models (`cached`)."""
    reported = {m.info.model_id: m for m in (session.models if session else [])}
    models = []
    for slots in record.models.values():
        model = types_pb2.WorkerModel()
        if slots.model_id in reported:
            model.CopyFrom(reported[slots.model_id])
        model.info.model_id = slots.model_id
        model.state = types_pb2.MODEL_STATE_READY if slots.ready else types_pb2.MODEL_STATE_LOADING
        model.max_slots = slots.max_slots
        model.prefix_cache_blocks = cached.get((record.worker_id, slots.model_id), 0)
        models.append(model)
    device = session.device if session else None
    return types_pb2.WorkerStatus(
        worker_id=record.worker_id,
        address=record.address,
        state=_WORKER_STATES[record.state],
        device=device,
        models=models,
        active_leases=len(record.leases),
        last_heartbeat_age_ms=max(0.0, (now - record.last_heartbeat) * 1000.0),
    )


def queue_depths(depths: dict[Priority, int]) -> list[types_pb2.QueueDepth]:
    return [types_pb2.QueueDepth(priority=int(p), depth=d) for p, d in sorted(depths.items())]


def model_scaling(decision: ScalingDecision, bounds: ScalingBounds) -> types_pb2.ModelScaling:
    rec = decision.recommendation
    return types_pb2.ModelScaling(
        model_id=decision.model_id,
        current_workers=decision.current,
        desired_workers=decision.desired,
        min_workers=bounds.min_workers,
        max_workers=bounds.max_workers,
        slot_utilization=rec.utilization,
        arrival_rate_per_second=decision.load.arrival_rate,
        reason=rec.reason,
    )


def status(snapshot: Snapshot) -> types_pb2.GetStatusResponse:
    return types_pb2.GetStatusResponse(
        queues=queue_depths(snapshot.queues),
        workers=[
            worker_status(r, session, snapshot.now, snapshot.cached_blocks)
            for r, session in snapshot.workers
        ],
        active_leases=snapshot.active_leases,
        total_slots=snapshot.total_slots,
        scaling=[model_scaling(d, bounds) for d, bounds in snapshot.scaling],
        models=[model_info(view) for view in snapshot.models],
    )
