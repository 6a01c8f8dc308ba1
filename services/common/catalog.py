"""The model catalog: the `[[models]]` entries of the config file.

Scheduler and worker read the same entries: the scheduler for limits and readiness, the
worker for how to load and run each model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.config import ConfigError

ENGINES = ("transformers", "simulated", "embedding", "vllm", "vllm-embedding")
EMBEDDING_ENGINES = ("embedding", "vllm-embedding")  # the engines of embedding models


@dataclass(frozen=True)
class GpuProfile:
    """How fast a simulated model runs on one kind of GPU.

    A step decodes one token for every running sequence and takes
    `decode_ms_per_step * (1 + batch_slowdown * (batch - 1))` ms, so per-sequence speed falls
    slowly with batch size while total throughput grows. A prompt is prefilled at
    `prefill_tokens_per_s` before its first token. Sequences are admitted while their prompt
    plus max_tokens fit `kv_capacity_tokens`.
    """

    prefill_tokens_per_s: float = 10_000.0
    decode_ms_per_step: float = 25.0
    batch_slowdown: float = 0.02
    kv_capacity_tokens: int = 60_000


def _default_profiles() -> dict[str, GpuProfile]:
    # Illustrative figures for a 70B model in fp8 on one GPU; override them in config.
    return {
        "H100": GpuProfile(12_000.0, 25.0, 0.02, 60_000),
        "A100": GpuProfile(5_000.0, 45.0, 0.03, 30_000),
    }


@dataclass(frozen=True)
class SimulationSpec:
    """Timing model of a big model: a profile per GPU type. A worker uses the profile whose
    name appears in its GPU's name (e.g. "NVIDIA H100 80GB HBM3"), else `gpu_type`'s."""

    gpu_type: str = "H100"
    memory_bytes: int = 70 * 1024**3
    profiles: dict[str, GpuProfile] = field(default_factory=_default_profiles)

    def profile_for(self, device_name: str) -> GpuProfile:
        for name, profile in self.profiles.items():
            if name.lower() in device_name.lower():
                return profile
        return self.profiles[self.gpu_type]


# vLLM's names for what a model entry already says: set the entry's own key instead
_VLLM_NAMES = {
    "dtype": "dtype",
    "max_model_len": "max_context_tokens",
    "max_num_seqs": "max_slots",
    "model": "source",
}


@dataclass(frozen=True)
class VllmSpec:
    """vLLM's engine arguments for a model on vLLM (`engine = "vllm"`, or "vllm-embedding" for
    an embedding model; its `[models.vllm]` table). vLLM runs the entry's `source` in its
    `dtype`, with `max_context_tokens` as max_model_len and `max_slots` as max_num_seqs;
    these are the rest."""

    block_size: int = 0  # tokens per KV-cache block; 0: vLLM's default for the device
    # None: vLLM's default (on for generation, off where it cannot cache, e.g. an encoder)
    enable_prefix_caching: bool | None = None
    gpu_memory_utilization: float = 0.9  # share of the GPU's memory vLLM may take (on a GPU)
    kv_cache_bytes: int = 0  # the KV cache's size, in place of the memory share; 0: the share
    enforce_eager: bool = False  # no CUDA graphs or compilation: starts faster, runs slower
    max_num_batched_tokens: int = 0  # tokens one engine step may take; 0: vLLM's default

    def __post_init__(self) -> None:
        if self.block_size < 0 or self.max_num_batched_tokens < 0:
            raise ConfigError("[models.vllm]: block_size and max_num_batched_tokens are >= 0")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("[models.vllm]: gpu_memory_utilization must be in (0, 1]")
        if self.kv_cache_bytes < 0:
            raise ConfigError("[models.vllm]: kv_cache_bytes must be >= 0")

    @classmethod
    def parse(cls, model_id: object, raw: Mapping[str, Any]) -> VllmSpec:
        where = f"[[models]] {model_id!r} vllm"
        for key, ours in _VLLM_NAMES.items():
            if key in raw:
                raise ConfigError(f"{where}: {key} is the model entry's {ours!r}; set that")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    engine: str
    description: str = ""
    max_context_tokens: int = 2048
    max_output_tokens: int = 512
    default_max_tokens: int = 128
    max_slots: int = 4  # concurrent sequences per worker (rows of the running batch)
    max_batch_tokens: int = 32768  # KV-cache budget: sum of prompt + max_tokens over rows
    # the prefix cache's most tokens (transformers engine); it holds only the part of
    # max_batch_tokens the running rows leave free; 0: off
    prefix_cache_tokens: int = 16384
    memory_bytes: int = 0  # device memory the weights need, for placement; 0: unknown
    min_workers: int = 1  # autoscaling bounds on the workers serving it; 0: scale to zero
    max_workers: int = 1
    pool: str = ""  # the pool of schedulers and workers that serves it; "": the default pool
    # transformers engine
    source: str = ""  # "package:<python package>" or a local model directory
    gguf_file: str = ""
    dtype: str = "float32"
    chat_template: bool = True
    simulation: SimulationSpec = field(default_factory=SimulationSpec)
    vllm: VllmSpec = field(default_factory=VllmSpec)  # engine = "vllm" or "vllm-embedding"

    @property
    def simulated(self) -> bool:
        return self.engine == "simulated"

    @property
    def weights_bytes(self) -> int:
        """Device memory the weights need: `memory_bytes`, else the simulated size."""
        if self.memory_bytes:
            return self.memory_bytes
        return self.simulation.memory_bytes if self.simulated else 0

    @property
    def kind(self) -> str:
        """What the model does: "generative" or "embedding"."""
        return "embedding" if self.engine in EMBEDDING_ENGINES else "generative"

    def __post_init__(self) -> None:
        where = f"model {self.model_id!r}"
        if not self.model_id:
            raise ConfigError("[[models]] entry without id")
        if self.engine not in ENGINES:
            raise ConfigError(f"{where}: engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine != "simulated" and not self.source:
            raise ConfigError(f"{where}: the {self.engine} engine needs a source")
        if self.kind == "generative" and not (
            0 < self.default_max_tokens <= self.max_output_tokens < self.max_context_tokens
        ):
            raise ConfigError(
                f"{where}: need 0 < default_max_tokens <= max_output_tokens < max_context_tokens"
            )
        if self.max_slots < 1:
            raise ConfigError(f"{where}: max_slots must be at least 1")
        if not 0 <= self.min_workers <= self.max_workers:
            raise ConfigError(f"{where}: need 0 <= min_workers <= max_workers")
        if self.max_batch_tokens < self.max_context_tokens:
            raise ConfigError(f"{where}: max_batch_tokens must be >= max_context_tokens")
        if self.prefix_cache_tokens < 0:
            raise ConfigError(f"{where}: prefix_cache_tokens must be >= 0")
        if self.simulation.gpu_type not in self.simulation.profiles:
            raise ConfigError(f"{where}: simulation.gpu_type names no profile")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"{where}: dtype must be float32, bfloat16 or float16")


def parse_catalog(entries: list[Mapping[str, Any]]) -> dict[str, ModelSpec]:
    """Builds specs from the `[[models]]` array; rejects duplicates and unknown keys."""
    known = set(ModelSpec.__dataclass_fields__) - {"model_id"} | {"id"}
    specs: dict[str, ModelSpec] = {}
    for raw in entries:
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"[[models]] {raw.get('id')!r}: unknown keys {sorted(unknown)}")
        values = {k: v for k, v in raw.items() if k not in ("id", "simulation", "vllm")}
        sim = dict(raw.get("simulation", {}))
        try:
            profiles = {
                **_default_profiles(),
                **{name: GpuProfile(**values) for name, values in sim.pop("profiles", {}).items()},
            }
            simulation = SimulationSpec(**sim, profiles=profiles)
        except TypeError as exc:
            raise ConfigError(f"[[models]] {raw.get('id')!r} simulation: {exc}") from exc
        vllm = VllmSpec.parse(raw.get("id"), raw.get("vllm", {}))
        try:
            spec = ModelSpec(
                model_id=str(raw.get("id", "")), simulation=simulation, vllm=vllm, **values
            )
        except TypeError as exc:
            raise ConfigError(f"[[models]] {raw.get('id')!r}: {exc}") from exc
        if spec.model_id in specs:
            raise ConfigError(f"[[models]] duplicate id {spec.model_id!r}")
        specs[spec.model_id] = spec
    return specs


def pool_catalog(
    data: Mapping[str, Any],
    section: Mapping[str, Any],
    env: Mapping[str, str],
    env_prefix: str,
    overrides: Mapping[str, Any],
) -> dict[str, ModelSpec]:
    """The [[models]] of the pool a scheduler or an actuator serves: its `pool` from the
    flags, `<PREFIX>_POOL` or its section, in that order ("": the default pool)."""
    pool = overrides.get("pool") or env.get(f"{env_prefix}_POOL") or section.get("pool", "")
    return {m: s for m, s in parse_catalog(data.get("models", [])).items() if s.pool == pool}
