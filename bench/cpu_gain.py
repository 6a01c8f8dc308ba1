"""What 16 concurrent SmolLM2 streams gain over 16 in a row: the engine alone vs the stack
that `make up` runs, called with grpcurl as a user would, in one run.

    make up                              # in another terminal: the default system
    python -m bench.cpu_gain [--streams 16] [--tokens 48] [--rounds 3]

The engine is the transformers engine in this process (the same model spec, prompts and token
counts: `ignore_eos`, greedy); the stack is the running system, one `grpcurl ...
Router/Generate` process per request. The two sides are measured in alternation, so that both
see the same spells of a shared machine (its speed swings by tens of percent from one minute
to the next): in a row, each prompt goes through the engine and then through the stack; at
once, `--rounds` concurrent rounds of each side alternate and the median counts. Gain = time
in a row ÷ time at once. Also reports how many smollm2 workers the system had during the
concurrent rounds (the CPU rule keeps one on a machine whose cores one worker already uses).
Writes bench/results/cpu_gain.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def load_engine() -> TransformersEngine:
    config = worker_config.load(read_toml(ROOT / "deploy/local/config.toml"), {}, {})
    engine = TransformersEngine(config.catalog[MODEL], Path(config.cache_dir), "cpu")
    engine.load()
    return engine


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


def stack_round(address: str, prompts: list[str], tokens: int) -> float:
    """One grpcurl process per prompt, all at once; seconds until the last has ended."""
    started = time.monotonic()
    with ThreadPoolExecutor(len(prompts)) as pool:
        list(pool.map(lambda p: grpcurl(address, p, tokens), prompts))
    return time.monotonic() - started


def in_a_row(engine: TransformersEngine, address: str, prompts: list[str], tokens: int):
    """Each prompt alone through the engine, then alone through the stack, alternately, so
    that both sides see the same spells of a shared machine. Returns (engine s, stack s)."""
    engine_s = stack_s = 0.0
    for prompt in prompts:
        engine_s += run_engine(engine, [prompt], tokens)
        started = time.monotonic()
        grpcurl(address, prompt, tokens)
        stack_s += time.monotonic() - started
    return engine_s, stack_s


def at_once(engine: TransformersEngine, address: str, prompts: list[str], tokens: int, rounds):
    """`rounds` concurrent rounds each, the engine's and the stack's alternately; returns the
    times of each side and the most smollm2 workers the system had during them."""
    engine_s, stack_s, peak = [], [], [workers_of_model(address)]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            peak.append(workers_of_model(address))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for _ in range(rounds):
            engine_s.append(run_engine(engine, prompts, tokens))
            stack_s.append(stack_round(address, prompts, tokens))
    finally:
        stop.set()
        watcher.join()
    return engine_s, stack_s, max(peak)


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
    parser.add_argument("--rounds", type=int, default=3, help="concurrent rounds per side")
    parser.add_argument("--out", default="bench/results/cpu_gain.json")
    args = parser.parse_args()
    prompts = PROMPTS[: args.streams]
    engine = load_engine()
    try:
        run_engine(engine, PROMPTS[:2], args.tokens)  # warm-up of both sides
        grpcurl(args.address, PROMPTS[0], 4)
        engine_row, stack_row = in_a_row(engine, args.address, prompts, args.tokens)
        engine_rounds, stack_rounds, workers = at_once(
            engine, args.address, prompts, args.tokens, args.rounds
        )
    finally:
        engine.close()
    result = summarize(args, engine_row, stack_row, engine_rounds, stack_rounds, workers)
    report(result)
    Path(args.out).write_text(json.dumps(result, indent=2))


def summarize(args, engine_row, stack_row, engine_rounds, stack_rounds, workers) -> dict:
    engine_once, stack_once = statistics.median(engine_rounds), statistics.median(stack_rounds)
    result = {
        "streams": args.streams,
        "tokens": args.tokens,
        "grpcurl": str(GRPCURL),
        "engine_in_row_s": engine_row,
        "engine_at_once_rounds_s": engine_rounds,
        "engine_at_once_s": engine_once,
        "engine_gain": engine_row / engine_once,
        "stack_in_row_s": stack_row,
        "stack_at_once_rounds_s": stack_rounds,
        "stack_at_once_s": stack_once,
        "stack_gain": stack_row / stack_once,
        "smollm2_workers_peak": workers,
    }
    result["stack_share_of_engine_gain"] = result["stack_gain"] / result["engine_gain"]
    return result


def report(result: dict) -> None:
    rounds = {
        side: " ".join(f"{t:.1f}" for t in result[f"{side}_at_once_rounds_s"])
        for side in ("engine", "stack")
    }
    print(f"{'':>8} {'in a row s':>11} {'at once s (median)':>19} {'rounds s':>16} {'gain':>6}")
    for side in ("engine", "stack"):
        print(
            f"{side:>8} {result[f'{side}_in_row_s']:>11.1f} "
            f"{result[f'{side}_at_once_s']:>19.1f} {rounds[side]:>16} "
            f"{result[f'{side}_gain']:>5.2f}×"
        )
    print(
        f"stack gain ÷ engine gain: {result['stack_share_of_engine_gain']:.0%}; "
        f"smollm2 workers during the concurrent rounds: {result['smollm2_workers_peak']}"
    )


if __name__ == "__main__":
    main()
