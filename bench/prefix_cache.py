"""Prefix caching and kv_aware placement on the real SmolLM2, through the whole stack.

    python -m bench.prefix_cache [--requests 80] [--concurrency 4] [--out ...]

Eight tenants, each with its own ~1,000-token system text, ask ~32-token questions (each
different) of two SmolLM2 workers (one CPU thread each), from `--concurrency` clients in a
closed loop; the tenant of each request is drawn from a seeded generator, the same sequence
for every configuration. Five configurations, each a fresh system (scheduler, two workers,
router as processes): the prefix cache off (every prompt prefilled whole); on (16k tokens a
worker: room for every tenant's text) with least_loaded placement, and with kv_aware; and a
cache of 4.6k tokens a worker (about half the tenants' texts: where a worker is chosen
decides what stays cached), with least_loaded and with kv_aware. Reports, per
configuration, time to first token at the client (p50, p90), the cache hit rate (prompt
tokens cached ÷ prompt tokens, from the generation summaries) and that rate against the
ideal: what one worker holding every prefix it had seen would have hit (the longest run of
each prompt's blocks any earlier prompt had).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, types_pb2

from bench import write_report
from bench.local_system import ROOT, LocalSystem
from services.common.prefix_blocks import block_hashes, reusable_blocks

MODEL = "smollm2-135m"
TENANTS = 8
WORDS = [
    "order",
    "delivery",
    "bread",
    "flour",
    "oven",
    "morning",
    "shift",
    "price",
    "invoice",
    "customer",
    "refund",
    "allergy",
    "gluten",
    "sugar",
    "butter",
    "recipe",
    "window",
    "kitchen",
    "supplier",
    "schedule",
    "holiday",
    "weekend",
    "staff",
    "payment",
    "receipt",
    "cake",
    "pastry",
    "coffee",
    "tea",
    "milk",
    "egg",
    "storage",
    "cleaning",
    "safety",
    "label",
    "box",
]
SMALL = 4608  # tokens of cache per worker: about 4.5 of the 8 tenants' texts
CONFIGS = (
    ("cache off", 0, "least_loaded"),
    ("least_loaded", 16384, "least_loaded"),
    ("kv_aware", 16384, "kv_aware"),
    ("least_loaded, small cache", SMALL, "least_loaded"),
    ("kv_aware, small cache", SMALL, "kv_aware"),
)


def tenant_text(k: int, words: int = 930) -> str:
    """Tenant k's system text: its own rules, about 1,000 tokens."""
    rng = random.Random(1000 + k)
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"You are the assistant of shop number {k}. House rules: {body}.\n\n"


def question(i: int) -> str:
    rng = random.Random(i)
    return f"Question {i}: " + " ".join(rng.choice(WORDS) for _ in range(24)) + "?"


def config_file(base: str, cache_tokens: int, placement: str, out: Path) -> Path:
    text = base.replace('placement = "kv_aware"', f'placement = "{placement}"', 1)
    anchor = 'id = "smollm2-135m"\n'
    assert anchor in text and f'placement = "{placement}"' in text
    text = text.replace(anchor, f"{anchor}prefix_cache_tokens = {cache_tokens}\n", 1)
    out.write_text(text)
    return out


def run_load(address: str, prompts: list[str], concurrency: int, max_tokens: int) -> list[dict]:
    """Closed loop: each client takes the next prompt when its last one finished."""
    stub = router_pb2_grpc.RouterStub(grpc.insecure_channel(address))
    results: list[dict] = [{} for _ in prompts]
    turn = iter(range(len(prompts)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(turn, None)
            if i is None:
                return
            request = types_pb2.GenerateRequest(
                model_id=MODEL, prompt=prompts[i], max_tokens=max_tokens
            )
            start, first = time.perf_counter(), None
            for message in stub.Generate(request, timeout=600):
                if first is None and message.HasField("delta"):
                    first = time.perf_counter()
                if message.HasField("summary"):
                    s = message.summary
                    results[i] = {
                        "ttft_ms": ((first or time.perf_counter()) - start) * 1000,
                        "prompt_tokens": s.prompt_tokens,
                        "cached_tokens": s.cached_prompt_tokens,
                        "worker": s.worker_id,
                    }

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def ideal_hits(prompts: list[str]) -> int:
    """Prompt tokens one worker with an unbounded cache would have found cached."""
    from transformers import AutoTokenizer

    from services.common.config import read_toml
    from services.common.prompt_encoding import encode_prompt, tokenizer_folder
    from services.gpu_worker.config import load as load_worker

    spec = load_worker(read_toml(ROOT / "deploy/local/config.toml"), {}, {}).catalog[MODEL]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(spec, ROOT / ".cache/models"))
    seen: set[int] = set()
    total = 0
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt, spec.chat_template)
        chain = block_hashes(ids)[: reusable_blocks(len(ids))]
        hit = next((k for k, h in enumerate(chain) if h not in seen), len(chain))
        total += hit * 16
        seen.update(block_hashes(ids))
    return total


def measure(name: str, config: Path, prompts: list[str], args) -> dict:
    with tempfile.TemporaryDirectory() as logs:
        env = {"INFERENCE_CONFIG": str(config), "WORKER_MODELS": MODEL, "WORKER_TORCH_THREADS": "1"}
        system = LocalSystem(Path(logs), workers=2, env=env)
        system.start(models=MODEL)
        try:
            run_load(system.router_address, ["Say hi.", "Say bye."], 2, 2)  # warm-up
            time.sleep(2)  # the router's tokenizer loads in the background
            started = time.perf_counter()
            rows = run_load(system.router_address, prompts, args.concurrency, args.max_tokens)
            wall = time.perf_counter() - started
        finally:
            system.stop()
    firsts = sorted(r["ttft_ms"] for r in rows)
    prompt_tokens = sum(r["prompt_tokens"] for r in rows)
    return {
        "config": name,
        "ttft_ms_p50": statistics.median(firsts),
        "ttft_ms_p90": firsts[int(0.9 * (len(firsts) - 1))],
        "hit_rate": sum(r["cached_tokens"] for r in rows) / prompt_tokens,
        "prompt_tokens": prompt_tokens,
        "requests_per_s": len(rows) / wall,
        "per_worker": {w: sum(r["worker"] == w for r in rows) for w in {r["worker"] for r in rows}},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", default="bench/results/prefix_cache.json")
    args = parser.parse_args()
    draw = random.Random(7)
    prompts = [tenant_text(draw.randrange(TENANTS)) + question(i) for i in range(args.requests)]
    base = (ROOT / "deploy/local/config.toml").read_text()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, cache_tokens, placement in CONFIGS:
            config = config_file(base, cache_tokens, placement, Path(folder) / f"{len(rows)}.toml")
            rows.append(measure(name, config, prompts, args))
    ideal = ideal_hits(prompts) / rows[0]["prompt_tokens"]
    off = rows[0]["ttft_ms_p50"]
    print(
        f"{'config':<26} {'ttft p50':>9} {'ttft p90':>9} {'vs off':>7} {'hit rate':>9} "
        f"{'of ideal':>9} {'req/s':>6}"
    )
    for r in rows:
        r["hits_of_ideal"] = r["hit_rate"] / ideal
        print(
            f"{r['config']:<26} {r['ttft_ms_p50']:>7.0f}ms {r['ttft_ms_p90']:>7.0f}ms "
            f"{off / r['ttft_ms_p50']:>6.1f}x {r['hit_rate']:>9.1%} {r['hits_of_ideal']:>9.1%} "
            f"{r['requests_per_s']:>6.2f}"
        )
    print(f"ideal hit rate (one worker, every prefix kept): {ideal:.1%}")
    write_report(args.out, {"args": vars(args), "ideal_hit_rate": ideal, "rows": rows})


if __name__ == "__main__":
    main()
