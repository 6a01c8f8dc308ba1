"""What 16 concurrent SmolLM2 streams gain over 16 in a row: the engine alone vs the stack
that `make up` runs, called with grpcurl as a user would, in one run.

    make up                              # in another terminal: the default system
    python -m bench.cpu_gain [--streams 16] [--tokens 48]

First the transformers engine in this process (the same model spec, prompts and token counts:
`ignore_eos`, greedy), one request after another, then all at once; then the same against
the running system with one `grpcurl ... Router/Generate` process per request. Gain = time
in a row ÷ time at once. Also reports how many smollm2 workers the system had during the
concurrent round (the CPU rule keeps one on a machine whose cores one worker already uses).
Writes bench/results/cpu_gain.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.common.config import read_toml
from services.gpu_worker import config as worker_config
from services.gpu_worker.engines.base import Finished, GenerationInput, SamplingOptions
from services.gpu_worker.engines.transformers_engine import TransformersEngine

ROOT = Path(__file__).resolve().parents[1]
GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"
MODEL = "smollm2-135m"
PROMPTS = [f"Write one sentence about the number {i}." for i in range(64)]


def engine_times(streams: int, tokens: int) -> tuple[float, float]:
    config = worker_config.load(read_toml(ROOT / "deploy/local/config.toml"), {}, {})
    engine = TransformersEngine(config.catalog[MODEL], Path(config.cache_dir), "cpu")
    engine.load()
    try:
        run_engine(engine, PROMPTS[:2], tokens)  # warm-up
        in_row = sum(run_engine(engine, [p], tokens) for p in PROMPTS[:streams])
        at_once = run_engine(engine, PROMPTS[:streams], tokens)
    finally:
        engine.close()
    return in_row, at_once


def run_engine(engine: TransformersEngine, prompts: list[str], tokens: int) -> float:
    done = threading.Semaphore(0)

    def sink(event) -> None:
        if isinstance(event, Finished | BaseException):
            done.release()

    sampling = SamplingOptions(ignore_eos=True)
    started = time.monotonic()
    for i, prompt in enumerate(prompts):
        engine.submit(GenerationInput(f"e{i}", prompt, tokens, sampling), sink)
    for _ in prompts:
        done.acquire()
    return time.monotonic() - started


def grpcurl(address: str, prompt: str, tokens: int) -> None:
    body = json.dumps(
        {
            "model_id": MODEL,
            "prompt": prompt,
            "max_tokens": tokens,
            "sampling": {"ignore_eos": True},
        }
    )
    subprocess.run(
        [str(GRPCURL), "-plaintext", "-d", body, address, "inference.v1.Router/Generate"],
        check=True,
        capture_output=True,
    )


def stack_times(address: str, streams: int, tokens: int) -> tuple[float, float, int]:
    grpcurl(address, PROMPTS[0], 4)  # warm-up
    started = time.monotonic()
    for prompt in PROMPTS[:streams]:
        grpcurl(address, prompt, tokens)
    in_row = time.monotonic() - started
    peak = [workers_of_model(address)]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            peak.append(workers_of_model(address))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda p: grpcurl(address, p, tokens), PROMPTS[:streams]))
    at_once = time.monotonic() - started
    stop.set()
    watcher.join()
    return in_row, at_once, max(peak)


def workers_of_model(address: str) -> int:
    out = subprocess.run(
        [str(GRPCURL), "-plaintext", address, "inference.v1.Router/GetStatus"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    status = json.loads(out)
    return sum(
        1
        for w in status.get("workers", [])
        if any(m.get("info", {}).get("model_id") == MODEL for m in w.get("models", []))
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--out", default="bench/results/cpu_gain.json")
    args = parser.parse_args()
    engine_row, engine_once = engine_times(args.streams, args.tokens)
    stack_row, stack_once, workers = stack_times(args.address, args.streams, args.tokens)
    result = {
        "streams": args.streams,
        "tokens": args.tokens,
        "engine_in_row_s": engine_row,
        "engine_at_once_s": engine_once,
        "engine_gain": engine_row / engine_once,
        "stack_in_row_s": stack_row,
        "stack_at_once_s": stack_once,
        "stack_gain": stack_row / stack_once,
        "smollm2_workers_peak": workers,
    }
    result["stack_share_of_engine_gain"] = result["stack_gain"] / result["engine_gain"]
    print(f"{'':>8} {'in a row s':>11} {'at once s':>10} {'gain':>6}")
    print(f"{'engine':>8} {engine_row:>11.1f} {engine_once:>10.1f} {result['engine_gain']:>5.2f}×")
    print(f"{'stack':>8} {stack_row:>11.1f} {stack_once:>10.1f} {result['stack_gain']:>5.2f}×")
    print(
        f"stack gain ÷ engine gain: {result['stack_share_of_engine_gain']:.0%}; "
        f"smollm2 workers during the concurrent round: {workers}"
    )
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
