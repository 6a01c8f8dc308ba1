"""Protobuf ↔ worker domain objects. Protobuf types stop here."""

from __future__ import annotations

from inference.v1 import scheduler_pb2, types_pb2

from services.common.catalog import ModelSpec
from services.common.errors import InvalidArgument
from services.gpu_worker.commands import Command, WorkerCommand
from services.gpu_worker.engines.base import (
    Engine,
    Finished,
    FinishReason,
    GenerationInput,
    ModelState,
    SamplingOptions,
)
from services.gpu_worker.telemetry import DeviceSample

_STATES = {
    ModelState.LOADING: types_pb2.MODEL_STATE_LOADING,
    ModelState.READY: types_pb2.MODEL_STATE_READY,
    ModelState.FAILED: types_pb2.MODEL_STATE_FAILED,
}
# a request's class, as engines that order their own queue rank it (lower runs first)
_PRIORITY_RANK = {types_pb2.PRIORITY_HIGH: 0, types_pb2.PRIORITY_LOW: 2}
MEDIUM_RANK = 1
_FINISH = {
    FinishReason.LENGTH: types_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP: types_pb2.FINISH_REASON_STOP,
}


def generation_input(
    request: types_pb2.GenerateRequest,
    spec: ModelSpec,
    resume: types_pb2.ResumeState | None = None,
    leased_max_tokens: int = 0,
) -> GenerationInput:
    """Applies the model's defaults; rejects what the router should already have rejected.
    `resume`: what the request streamed before it moved here; `leased_max_tokens`: the most
    its lease allows (0: no bound beyond the model's)."""
    max_tokens = request.max_tokens or spec.default_max_tokens
    if leased_max_tokens:
        max_tokens = min(max_tokens, leased_max_tokens)
    if max_tokens > spec.max_output_tokens:
        raise InvalidArgument(
            f"max_tokens {max_tokens} exceeds the limit of {spec.model_id} "
            f"({spec.max_output_tokens})"
        )
    s = request.sampling
    sampling = SamplingOptions(
        temperature=s.temperature if s.HasField("temperature") else 0.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=s.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        ignore_eos=s.ignore_eos,
        min_tokens=s.min_tokens,
    )
    resume_tokens = min(resume.generated_tokens, max_tokens) if resume else 0
    return GenerationInput(
        request.request_id,
        request.prompt,
        max_tokens,
        sampling,
        resume_text=resume.generated_text if resume else "",
        resume_tokens=resume_tokens,
        priority_rank=_PRIORITY_RANK.get(request.priority, MEDIUM_RANK),
    )


def model_info(spec: ModelSpec) -> types_pb2.ModelInfo:
    return types_pb2.ModelInfo(
        model_id=spec.model_id,
        kind=types_pb2.MODEL_KIND_EMBEDDING
        if spec.kind == "embedding"
        else types_pb2.MODEL_KIND_GENERATIVE,
        simulated=spec.simulated,
        max_context_tokens=spec.max_context_tokens,
        max_output_tokens=spec.max_output_tokens,
        default_max_tokens=spec.default_max_tokens,
        description=spec.description,
    )


def worker_model(engine: Engine) -> types_pb2.WorkerModel:
    stats = engine.stats()
    return types_pb2.WorkerModel(
        info=model_info(engine.spec),
        state=_STATES[engine.state] if engine.healthy else types_pb2.MODEL_STATE_FAILED,
        max_slots=stats.max_slots,
        active_sequences=stats.running,
        kv_cache_tokens_used=stats.kv_tokens_used,
        kv_cache_tokens_capacity=stats.kv_tokens_capacity,
        tokens_per_second=stats.tokens_per_second,
        memory_bytes=stats.memory_bytes,
        engine_running=stats.engine_running,
        engine_waiting=stats.engine_waiting,
        prefix_cache_queries=stats.prefix_cache_queries,
        prefix_cache_hits=stats.prefix_cache_hits,
    )


def loadable_model(spec: ModelSpec) -> types_pb2.WorkerModel:
    """A catalog model the worker could load, with the memory it would take."""
    return types_pb2.WorkerModel(
        info=model_info(spec), max_slots=spec.max_slots, memory_bytes=spec.weights_bytes
    )


def device(sample: DeviceSample) -> types_pb2.DeviceTelemetry:
    return types_pb2.DeviceTelemetry(
        gpu_id=sample.gpu_id,
        name=sample.name,
        is_cpu=sample.is_cpu,
        utilization_percent=sample.utilization_percent,
        memory_used_bytes=sample.memory_used_bytes,
        memory_total_bytes=sample.memory_total_bytes,
        temperature_celsius=sample.temperature_celsius,
        power_watts=sample.power_watts,
    )


def summary(
    finished: Finished,
    model_id: str,
    worker_id: str,
    gpu_id: str,
    inference_ms: float,
    ttft_ms: float,
) -> types_pb2.GenerationSummary:
    return types_pb2.GenerationSummary(
        finish_reason=_FINISH[finished.reason],
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        cached_prompt_tokens=finished.cached_prompt_tokens,
        inference_time_ms=inference_ms,
        time_to_first_token_ms=ttft_ms,
        gpu_id=gpu_id,
        worker_id=worker_id,
        model_id=model_id,
    )


def heartbeat(
    sequence: int,
    sample: DeviceSample,
    engines: list[Engine],
    healthy: bool,
    draining: bool,
    lease_ids: list[str],
) -> scheduler_pb2.WorkerSessionRequest:
    return scheduler_pb2.WorkerSessionRequest(
        heartbeat=scheduler_pb2.WorkerHeartbeat(
            sequence=sequence,
            device=device(sample),
            models=[worker_model(e) for e in engines],
            healthy=healthy,
            draining=draining,
            lease_ids=lease_ids,
            prefix_caches=prefix_reports(engines, full=False),
        )
    )


def prefix_reports(engines: list[Engine], full: bool) -> list[types_pb2.PrefixCacheReport]:
    """Each prefix cache's blocks: stored and evicted since the last report, or (`full`, or
    where the changes overflowed their bound) every block it holds."""
    reports = []
    for engine in engines:
        cache = engine.prefix_cache
        if cache is None or not cache.enabled:
            continue
        events = cache.take_events()
        model_id = engine.spec.model_id
        if full or events.resync:
            reports.append(
                types_pb2.PrefixCacheReport(model_id=model_id, stored=cache.held(), full=True)
            )
        elif events.stored or events.removed:
            reports.append(
                types_pb2.PrefixCacheReport(
                    model_id=model_id, stored=events.stored, removed=events.removed
                )
            )
    return reports


# each command's field in WorkerSessionResponse, and the field of it that is its argument
_COMMAND_ARGUMENTS = {
    WorkerCommand.DRAIN: "reason",
    WorkerCommand.LOAD_MODEL: "model_id",
    WorkerCommand.UNLOAD_MODEL: "model_id",
    WorkerCommand.REVOKE_LEASE: "lease_id",
}


def command(message: scheduler_pb2.WorkerSessionResponse) -> Command | None:
    """The command a session message carries; None for another message or one unknown."""
    field = message.WhichOneof("command")
    try:
        kind = WorkerCommand(field)
    except ValueError:
        return None
    return Command(kind, getattr(getattr(message, field), _COMMAND_ARGUMENTS[kind]))
