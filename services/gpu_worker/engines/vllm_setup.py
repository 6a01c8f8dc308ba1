"""What the vLLM engine hands vLLM: its engine arguments, each request's sampling
parameters, and the stat logger through which vLLM's figures come back. vLLM is imported
only inside these functions: the rest of the worker runs without it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.catalog import ModelSpec
from services.gpu_worker.child_processes import end_spawned_children_with_this_process
from services.gpu_worker.engines.base import GenerationInput


@dataclass
class EngineFigures:
    """vLLM's own figures, as its last step reported them (written on the engine's loop)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # the share of the KV cache's blocks in use
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache, since start
    prefix_hits: int = 0  # ... and found there

    def record(self, stats: Any) -> None:
        """Takes vLLM's `SchedulerStats`; its prefix-cache counts are per interval."""
        self.running = stats.num_running_reqs
        self.waiting = stats.num_waiting_reqs
        self.kv_usage = stats.kv_cache_usage
        self.prefix_queries += stats.prefix_cache_stats.queries
        self.prefix_hits += stats.prefix_cache_stats.hits


def stat_logger_factory(figures: EngineFigures) -> Any:
    """A factory of vLLM stat loggers that record into `figures`. A logger must never raise:
    vLLM fails the request whose step it was logging."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class FiguresLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.figures = figures

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                with contextlib.suppress(Exception):  # figures are best effort
                    self.figures.record(scheduler_stats)

        def log_engine_initialized(self) -> None:
            pass

    return FiguresLogger


def engine_args(
    spec: ModelSpec, folder: Path, device: str, runner: str = "generate", kv_events: str = ""
) -> Any:
    """vLLM's `AsyncEngineArgs` for the model: the catalog entry's dtype, context and slots,
    its `[models.vllm]` table, priority scheduling (our classes go to vLLM), and vLLM's
    `runner` ("generate", or "pooling" for an embedding model); with `kv_events` (a ZMQ
    endpoint), its KV-cache events published there."""
    from vllm import AsyncEngineArgs
    from vllm.config import KVEventsConfig

    end_spawned_children_with_this_process()  # vLLM's engine core: no orphan after kill -9
    if device == "cpu":
        configure_cpu()
    options = spec.vllm
    optional = {
        "block_size": options.block_size or None,
        "kv_cache_memory_bytes": options.kv_cache_bytes or None,
        "max_num_batched_tokens": options.max_num_batched_tokens or None,
        "enable_prefix_caching": options.enable_prefix_caching,
        "kv_events_config": KVEventsConfig(
            enable_kv_cache_events=True, publisher="zmq", endpoint=kv_events
        )
        if kv_events
        else None,
    }
    return AsyncEngineArgs(
        model=str(folder),
        runner=runner,
        dtype=spec.dtype,
        max_model_len=spec.max_context_tokens,
        max_num_seqs=spec.max_slots,
        gpu_memory_utilization=options.gpu_memory_utilization,
        enforce_eager=options.enforce_eager,
        scheduling_policy="priority",
        disable_log_stats=True,  # our stat logger only: vLLM's own would log every 5 s
        **{key: value for key, value in optional.items() if value is not None},
    )


def configure_cpu() -> None:
    """vLLM's CPU build binds its OpenMP threads from variables; where the user set none,
    every core this process may use, none reserved. Its engine core is spawned (the worker
    runs gRPC threads, which a fork would copy in an unknown state)."""
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def sampling_params(request: GenerationInput) -> Any:
    """vLLM's `SamplingParams` for every field of our contract. A resumed request asks only
    for the tokens it may still generate, and its `min_tokens` counts what it streamed."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    s = request.sampling
    return SamplingParams(
        temperature=0.0 if s.greedy else s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,  # 0: off, as ours
        seed=s.seed,
        stop=list(s.stop) or None,
        max_tokens=request.remaining_tokens,
        min_tokens=max(0, s.min_tokens - request.resume_tokens),
        ignore_eos=s.ignore_eos,
        output_kind=RequestOutputKind.DELTA,
    )
