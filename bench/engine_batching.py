"""Which continuous batching is faster here: transformers' own, or our decode loop?

    python -m bench.engine_batching [--out bench/results/engine_batching.json]

SmolLM2-135M fp32 on this machine's CPU, greedy, 16-token prompts, 32 new tokens, batch 1, 4,
16 and 64, in one run. Three contenders, each warmed up first:
- `generate_batch`: transformers' continuous batching (paged attention, its scheduler);
- `kv_batch loop`: our left-padded KV-cache batch (services/gpu_worker/engines/kv_batch.py);
- `engine`: the whole TransformersEngine on that loop (admission, sampling, detokenizing).
Tokens/s = generated tokens / wall time, prefill included.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from services.common.config import read_toml
from services.gpu_worker import config as worker_config
from services.gpu_worker.engines import kv_batch
from services.gpu_worker.engines.base import Finished, GenerationInput
from services.gpu_worker.engines.transformers_engine import TransformersEngine

BATCHES = (1, 4, 16, 64)
NEW_TOKENS = 32
TEXT = "The quick brown fox jumps over the lazy dog and then runs far away into the woods"


def own_loop(model, prompts: list[list[int]]) -> int:
    batch = kv_batch.prefill(model, prompts, "cpu")
    for _ in range(NEW_TOKENS - 1):
        kv_batch.decode(model, batch, batch.last_logits.argmax(-1))
    return len(prompts) * NEW_TOKENS


def transformers_cb(model, prompts: list[list[int]]) -> int:
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    out = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    return sum(len(o.generated_tokens) for o in out.values())


def whole_engine(engine: TransformersEngine, texts: list[str]) -> int:
    done = threading.Semaphore(0)
    produced = []

    def sink(event):
        if isinstance(event, Finished):
            produced.append(event.completion_tokens)
            done.release()

    for i, text in enumerate(texts):
        engine.submit(GenerationInput(f"e{i}", text, NEW_TOKENS), sink)
    for _ in texts:
        done.acquire()
    return sum(produced)


def timed(fn, *args) -> float:
    fn(*args)  # warm-up at this batch size
    start = time.perf_counter()
    tokens = fn(*args)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/engine_batching.json")
    args = parser.parse_args()
    config = worker_config.load(read_toml("deploy/local/config.toml"), {}, {})
    spec = config.catalog["smollm2-135m"]
    engine = TransformersEngine(
        spec.__class__(**{**spec.__dict__, "chat_template": False, "max_slots": 64}),
        Path(config.cache_dir),
        "cpu",
    )
    engine.load()
    model, tokenizer = engine._model, engine._tokenizer
    base = tokenizer(TEXT, add_special_tokens=False)["input_ids"][:16]
    rows = []
    for size in BATCHES:
        prompts = [[*base[:15], base[i % 15]] for i in range(size)]
        texts = [tokenizer.decode(p) for p in prompts]
        row = {
            "batch": size,
            "generate_batch_tok_s": timed(transformers_cb, model, prompts),
            "kv_batch_loop_tok_s": timed(own_loop, model, prompts),
            "engine_tok_s": timed(whole_engine, engine, texts),
        }
        rows.append(row)
        print(
            f"batch {size:>2}: generate_batch {row['generate_batch_tok_s']:6.1f}  "
            f"kv_batch loop {row['kv_batch_loop_tok_s']:6.1f}  "
            f"engine {row['engine_tok_s']:6.1f} tok/s",
            flush=True,
        )
    engine.close()
    print(
        f"\n{'batch':>5} {'generate_batch':>15} {'kv_batch loop':>14} {'engine':>8} "
        f"{'loop/transformers':>18}"
    )
    for r in rows:
        ratio = r["kv_batch_loop_tok_s"] / r["generate_batch_tok_s"]
        print(
            f"{r['batch']:>5} {r['generate_batch_tok_s']:>15.1f} "
            f"{r['kv_batch_loop_tok_s']:>14.1f} {r['engine_tok_s']:>8.1f} {ratio:>17.2f}x"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
