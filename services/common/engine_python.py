"""Which Python interpreter runs a model's worker. An engine with its own pins (vLLM pins its
own torch and transformers) lives in a virtual environment of its own, built by one make
target; every other engine runs in the project's environment, the caller's own."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from services.common.catalog import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
# engine → (its environment under the project root, the make target that builds it)
ENGINE_ENVIRONMENTS = {"vllm": (".venv-vllm", "make setup-vllm")}


def worker_python(engine: str) -> str:
    """The interpreter of a worker for `engine`: `<ENGINE>_PYTHON` (e.g. VLLM_PYTHON) where
    set, else the engine's environment, else this process's own."""
    if engine not in ENGINE_ENVIRONMENTS:
        return sys.executable
    folder, _ = ENGINE_ENVIRONMENTS[engine]
    return os.environ.get(f"{engine.upper()}_PYTHON") or str(ROOT / folder / "bin" / "python")


def missing_environment(specs: Iterable[ModelSpec]) -> str:
    """What is missing to start the workers of these models ("" if nothing)."""
    for spec in specs:
        python = worker_python(spec.engine)
        if spec.engine in ENGINE_ENVIRONMENTS and not os.access(python, os.X_OK):
            target = ENGINE_ENVIRONMENTS[spec.engine][1]
            return f"model {spec.model_id!r} runs on {spec.engine}: {python} is missing ({target})"
    return ""
