"""Side by side: vLLM's own OpenAI server against our stack with its worker on vLLM, the same
model and engine arguments, both driven by guidellm in one run.

    python -m bench.vs_vllm_server [--streams 1,4,16] [--seconds 30]

Needs `make setup-vllm` (.venv-vllm) and sets up guidellm (.venv-bench). Each side starts in
turn, alone on the machine: vLLM's server (`vllm serve`, from .venv-vllm) with the flags our
engine gives `AsyncLLM` for `smollm2-135m` (deploy/local/config.toml and its [models.vllm]),
then scheduler, router and one worker on vLLM as processes, reached at the router's HTTP door.
guidellm runs the same concurrent profile against each (chat completions of synthetic
64-token prompts and 32-token answers, streaming, `ignore_eos`). Prints TTFT and ITL p50 and
output tokens/s per concurrency for both and their ratio; writes bench/results/vs_vllm_server.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import tomli_w

from bench.guidellm_run import GUIDELLM, load_arguments, scenario, summarize
from bench.local_system import ROOT, LocalSystem, free_port
from scripts.engine_config import move
from services.common.catalog import ModelSpec, parse_catalog
from services.common.engine_python import worker_python
from services.gpu_worker.engines.loader import model_folder
from services.gpu_worker.engines.vllm_setup import configure_cpu

MODEL = "smollm2-135m"
CONFIG = ROOT / "deploy" / "local" / "config.toml"


def serve_command(spec: ModelSpec, folder: Path, port: int) -> list[str]:
    """`vllm serve` with the engine arguments our engine gives AsyncLLM for `spec`
    (vllm_setup.engine_args), as vLLM's server ships: its default scheduling policy."""
    options = spec.vllm
    command = [worker_python("vllm"), "-m", "vllm.entrypoints.openai.api_server"]
    command += ["--model", str(folder), "--served-model-name", spec.model_id]
    command += ["--dtype", spec.dtype, "--max-model-len", str(spec.max_context_tokens)]
    command += ["--max-num-seqs", str(spec.max_slots), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--gpu-memory-utilization", str(options.gpu_memory_utilization)]
    if options.enable_prefix_caching is not None:  # else vLLM's default, as ours leaves it
        command.append(
            "--enable-prefix-caching"
            if options.enable_prefix_caching
            else "--no-enable-prefix-caching"
        )
    if options.enforce_eager:
        command.append("--enforce-eager")
    for flag, value in (
        ("--kv-cache-memory-bytes", options.kv_cache_bytes),
        ("--block-size", options.block_size),
        ("--max-num-batched-tokens", options.max_num_batched_tokens),
    ):
        if value:
            command += [flag, str(value)]
    return command


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode})")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"{url} not healthy within {timeout_s}s")


def guidellm(target: str, tokenizer: Path, args: argparse.Namespace, work: Path) -> list[dict]:
    spec, report = work / "scenario.json", work / "report.json"
    spec.write_text(json.dumps(scenario(target, tokenizer, args.streams, args.seconds)))
    subprocess.run(
        [GUIDELLM, "run", "-c", spec, "--output", f"kind=json,path={report}", "--disable-progress"],
        cwd=work,  # guidellm writes guidellm.log where it runs
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return summarize(json.loads(report.read_text()))


def vllm_server_side(spec: ModelSpec, folder: Path, args, work: Path) -> list[dict]:
    port = free_port()
    with open(work / "vllm-serve.log", "w") as log:
        server = subprocess.Popen(
            serve_command(spec, folder, port), cwd=work, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", 600, server)
        return guidellm(f"http://127.0.0.1:{port}", folder, args, work)
    finally:
        server.terminate()
        server.wait(timeout=60)


def stack_side(config: Path, folder: Path, args, work: Path) -> list[dict]:
    env = {"INFERENCE_CONFIG": str(config), "WORKER_MODELS": MODEL}
    system = LocalSystem(
        work, workers=1, env=env, worker_launch=lambda _: (worker_python("vllm"), {})
    )
    system.start(ready_timeout_s=600, models=MODEL)
    try:
        return guidellm(f"http://127.0.0.1:{system.http_port}", folder, args, work)
    finally:
        system.stop()


def run(args: argparse.Namespace, work: Path) -> dict:
    subprocess.run([str(ROOT / "scripts" / "setup_bench.sh")], check=True)
    configure_cpu()  # the OpenMP binding our engine gives vLLM, for vLLM's server too
    raw = tomllib.loads(CONFIG.read_text())
    move(raw, "vllm")
    spec = parse_catalog(raw["models"])[MODEL]
    folder = model_folder(spec, ROOT / ".cache" / "models")
    config = work / "config-vllm.toml"
    config.write_text(tomli_w.dumps(raw))
    sides = {}
    for name, side in (("vllm_server", vllm_server_side), ("ours", stack_side)):
        (work / name).mkdir()
        argument = spec if side is vllm_server_side else config
        sides[name] = side(argument, folder, args, work / name)
    return {"streams": args.streams, "seconds": args.seconds, **sides}


def main() -> None:
    args = load_arguments("bench/results/vs_vllm_server.json")
    with tempfile.TemporaryDirectory() as work:
        result = run(args, Path(work))
    print(
        f"{'streams':>7} {'side':>12} {'TTFT p50 ms':>12} {'ITL p50 ms':>11} {'out tok/s':>10} "
        f"{'ok':>4} {'errors':>6}"
    )
    for i, streams in enumerate(result["streams"]):
        for side in ("vllm_server", "ours"):
            r = result[side][i]
            print(
                f"{streams:>7} {side:>12} {r['ttft_ms_p50']:>12.1f} {r['itl_ms_p50']:>11.1f} "
                f"{r['output_tokens_per_s']:>10.1f} {r['requests']['successful']:>4} "
                f"{r['requests']['errored']:>6}"
            )
        ours, theirs = result["ours"][i], result["vllm_server"][i]
        print(
            f"{'':>7} {'ours/vLLM':>12} {ours['ttft_ms_p50'] - theirs['ttft_ms_p50']:>+12.1f} "
            f"{'':>11} {ours['output_tokens_per_s'] / theirs['output_tokens_per_s']:>9.2f}x"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
