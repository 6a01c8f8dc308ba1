"""Protobuf ↔ scheduler domain objects. Protobuf types stop here."""

from __future__ import annotations

from typing import Any

from inference.v1 import scheduler_pb2, types_pb2

from services.common.catalog import ModelSpec
from services.scheduler.core.autoscaling import ScalingBounds, ScalingDecision
from services.scheduler.core.model_placement import LoadModel, UnloadModel
from services.scheduler.core.scheduler import ModelView
from services.scheduler.core.types import (
    ModelCatalogEntry,
    ModelSlots,
    Priority,
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


def placement_command(command: LoadModel | UnloadModel) -> scheduler_pb2.WorkerSessionResponse:
    """A placement decision as the WorkerSession message that carries it."""
    if isinstance(command, LoadModel):
        return scheduler_pb2.WorkerSessionResponse(
            load_model=scheduler_pb2.LoadModelCommand(model_id=command.model_id)
        )
    return scheduler_pb2.WorkerSessionResponse(
        unload_model=scheduler_pb2.UnloadModelCommand(model_id=command.model_id)
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


def worker_status(record: WorkerRecord, session: Any, now: float) -> types_pb2.WorkerStatus:
    """The worker's lease-table view, with the engine figures of its last heartbeat."""
    reported = {m.info.model_id: m for m in (session.models if session else [])}
    models = []
    for slots in record.models.values():
        model = types_pb2.WorkerModel()
        if slots.model_id in reported:
            model.CopyFrom(reported[slots.model_id])
        model.info.model_id = slots.model_id
        model.state = types_pb2.MODEL_STATE_READY if slots.ready else types_pb2.MODEL_STATE_LOADING
        model.max_slots = slots.max_slots
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
