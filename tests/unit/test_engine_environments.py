"""The vLLM engine kind's configuration, its environment, and the spawned-child guard; none
of it needs vLLM installed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing import spawn
from pathlib import Path

import pytest

from scripts.engine_config import move
from services.common.catalog import parse_catalog
from services.common.config import ConfigError
from services.common.engine_python import missing_environment, worker_python
from services.gpu_worker.child_processes import end_spawned_children_with_this_process

ROOT = Path(__file__).resolve().parents[2]


def vllm_entry(**vllm) -> dict:
    return {"id": "m", "engine": "vllm", "source": "/models/m", "vllm": vllm}


def test_a_vllm_table_is_parsed_and_checked():
    spec = parse_catalog([vllm_entry(block_size=16, kv_cache_bytes=1 << 30)])["m"]
    assert spec.kind == "generative"
    assert (spec.vllm.block_size, spec.vllm.kv_cache_bytes) == (16, 1 << 30)
    assert spec.vllm.enable_prefix_caching is None  # vLLM's own default
    with pytest.raises(ConfigError, match="max_slots"):
        parse_catalog([vllm_entry(max_num_seqs=64)])  # the entry's own key says it
    with pytest.raises(ConfigError, match="unexpected keyword"):
        parse_catalog([vllm_entry(swap_space=4)])
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        parse_catalog([vllm_entry(gpu_memory_utilization=1.5)])
    with pytest.raises(ConfigError, match="needs a source"):
        parse_catalog([{"id": "m", "engine": "vllm"}])


def test_an_embedding_model_on_vllm_is_an_embedding_model():
    entry = {"id": "e", "engine": "vllm-embedding", "source": "/models/e", "vllm": {}}
    spec = parse_catalog([{**entry, "max_context_tokens": 256, "max_batch_tokens": 256}])["e"]
    assert spec.kind == "embedding"


def test_engine_config_moves_only_the_embedded_engines_models():
    config = {
        "models": [
            {"id": "a", "engine": "transformers"},
            {"id": "b", "engine": "simulated"},
            {"id": "c", "engine": "embedding"},
        ]
    }
    assert move(config, "vllm") == ["a", "c"]
    assert [m["engine"] for m in config["models"]] == ["vllm", "simulated", "vllm-embedding"]


def test_a_vllm_worker_runs_in_its_own_environment(monkeypatch, tmp_path):
    assert worker_python("transformers") == sys.executable
    monkeypatch.setenv("VLLM_PYTHON", str(tmp_path / "python"))
    assert worker_python("vllm") == str(tmp_path / "python")
    assert worker_python("vllm-embedding") == str(tmp_path / "python")  # the same venv
    specs = parse_catalog([vllm_entry()]).values()
    assert "make setup-vllm" in missing_environment(specs)  # no such interpreter yet
    (tmp_path / "python").write_text("#!/bin/sh\n")
    (tmp_path / "python").chmod(0o755)
    assert missing_environment(specs) == ""


def test_a_spawned_child_ends_with_its_parent_even_after_kill_9(tmp_path):
    """A parent that arms the guard and spawns a child, then is killed with SIGKILL: the
    child (vLLM's engine core, in the worker) does not live on."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from services.gpu_worker.child_processes import end_spawned_children_with_this_process\n"
        "def child():\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    end_spawned_children_with_this_process()\n"
        "    p = multiprocessing.get_context('spawn').Process(target=child)\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_the_guard_is_armed_once(monkeypatch):
    monkeypatch.setattr(spawn, "get_command_line", spawn.get_command_line)
    end_spawned_children_with_this_process()
    end_spawned_children_with_this_process()
    program = spawn.get_command_line(pipe_handle=3)[-2]
    assert program.count("prctl") == 1 and "spawn_main" in program
