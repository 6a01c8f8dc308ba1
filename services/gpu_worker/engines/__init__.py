"""Model engines behind one interface per kind (see base.py)."""

from __future__ import annotations

from pathlib import Path

from services.common.catalog import ModelSpec
from services.gpu_worker.engines.base import EmbeddingEngine, GenerativeEngine


def create_engine(
    spec: ModelSpec, cache_dir: Path, device: str, device_name: str = ""
) -> GenerativeEngine | EmbeddingEngine:
    """The engine the spec names. Weights are loaded later, by `engine.load()`.
    `device_name` (e.g. "NVIDIA H100 80GB HBM3") picks a simulated model's GPU profile."""
    if spec.engine == "simulated":
        from services.gpu_worker.engines.simulated import SimulatedEngine

        return SimulatedEngine(spec, device_name)
    if spec.engine == "embedding":
        from services.gpu_worker.engines.embedding import SentenceEmbeddingEngine

        return SentenceEmbeddingEngine(spec, device)
    if spec.engine == "vllm":
        from services.gpu_worker.engines.vllm_engine import VllmEngine

        return VllmEngine(spec, cache_dir, device)
    if spec.engine == "vllm-embedding":
        from services.gpu_worker.engines.vllm_embedding import VllmEmbeddingEngine

        return VllmEmbeddingEngine(spec, cache_dir, device)
    from services.gpu_worker.engines.transformers_engine import TransformersEngine

    return TransformersEngine(spec, cache_dir, device)
