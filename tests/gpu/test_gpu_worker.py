"""GPU path: pinning, the real model on CUDA, NVML figures. Skipped without an NVIDIA GPU."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU on this machine", allow_module_level=True)

from services.common.config import read_toml  # noqa: E402
from services.gpu_worker import config as worker_config  # noqa: E402
from services.gpu_worker.engines.base import GenerationInput  # noqa: E402
from services.gpu_worker.engines.transformers_engine import TransformersEngine  # noqa: E402
from services.gpu_worker.telemetry import NvmlProbe  # noqa: E402


def test_the_model_runs_on_the_gpu_and_nvml_sees_the_memory():
    probe = NvmlProbe(0)
    before = probe.sample()
    assert not before.is_cpu and before.memory_total_bytes > 0 and before.gpu_id == "gpu-0"
    config = worker_config.load(read_toml("deploy/local/config.toml"), {}, {})
    engine = TransformersEngine(config.catalog["smollm2-135m"], Path(".cache/models"), "cuda")
    engine.load()
    assert next(engine._model.parameters()).device.type == "cuda"
    done, events = threading.Event(), []

    def sink(event):
        events.append(event)
        if not hasattr(event, "text"):
            done.set()

    engine.submit(GenerationInput("g", "What is the capital of France?", 32), sink)
    assert done.wait(60)
    assert "Paris" in "".join(e.text for e in events if hasattr(e, "text"))
    assert probe.sample().memory_used_bytes > before.memory_used_bytes
    engine.close()


def test_gpu_index_pins_the_process_through_cuda_visible_devices():
    code = (
        "from services.gpu_worker.__main__ import pin_device;"
        "from services.gpu_worker.config import WorkerConfig;"
        "import os, torch;"
        "d = pin_device(WorkerConfig(gpu_index=0, catalog={}, models=''));"
        "print(os.environ['CUDA_VISIBLE_DEVICES'], d, torch.cuda.device_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True
    ).stdout.split()
    assert out[0] == "0" and out[1] == "cuda" and out[2] == "1"
