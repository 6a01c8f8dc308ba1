"""Which Python interpreter runs a model's worker. An engine with its own pins (vLLM pins its
own torch and transformers) lives in a virtual environment of its own, built by one make
target; every other engine runs in the project's environment, the caller's own."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.common.catalog import ModelSpec

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Environment:
    folder: str  # under the project root
    target: str  # the make target that builds it
    variable: str  # an interpreter set in this variable replaces the folder's


VLLM = Environment(".venv-vllm", "make setup-vllm", "VLLM_PYTHON")
ENGINE_ENVIRONMENTS = {"vllm": VLLM, "vllm-embedding": VLLM}


def worker_python(engine: str) -> str:
    """The interpreter of a worker for `engine`: its environment's variable (VLLM_PYTHON)
    where set, else the engine's environment, else this process's own."""
    environment = ENGINE_ENVIRONMENTS.get(engine)
    if environment is None:
        return sys.executable
    return os.environ.get(environment.variable) or str(ROOT / environment.folder / "bin" / "python")


def missing_environment(specs: Iterable[ModelSpec]) -> str:
    """What is missing to start the workers of these models ("" if nothing)."""
    for spec in specs:
        python = worker_python(spec.engine)
        if spec.engine in ENGINE_ENVIRONMENTS and not os.access(python, os.X_OK):
            target = ENGINE_ENVIRONMENTS[spec.engine].target
            return f"model {spec.model_id!r} runs on {spec.engine}: {python} is missing ({target})"
    return ""
