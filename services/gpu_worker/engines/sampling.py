"""Next-token selection from logits: greedy, or temperature / top-k / top-p sampling.

Numerically safe for every value the contract accepts: a vanishing temperature is greedy
(`SamplingOptions.greedy`), non-finite logits are tamed, and a distribution that comes out
empty or not finite falls back to the most likely token, so `multinomial` never sees NaN.
"""

from __future__ import annotations

import torch

from services.gpu_worker.engines.base import SamplingOptions


def make_generator(options: SamplingOptions, device: str) -> torch.Generator | None:
    """A seeded generator for reproducible sampling; None for greedy decoding."""
    if options.greedy:
        return None
    generator = torch.Generator(device=device)
    if options.seed is not None:
        generator.manual_seed(options.seed)
    else:
        generator.seed()
    return generator


def next_token(
    logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None
) -> int:
    """Picks the next token from a 1-D logits vector."""
    if options.greedy:
        return int(torch.argmax(logits))
    scores = torch.nan_to_num(logits.float(), nan=float("-inf")) / options.temperature
    if options.top_k > 0 and options.top_k < scores.numel():
        kth = torch.topk(scores, options.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest set whose mass reaches top_p (always at least one token)
        drop = cumulative - sorted_probs >= options.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    total = float(probs.sum())
    if not (total > 0 and total < float("inf")) or not bool(torch.isfinite(probs).all()):
        return int(torch.argmax(scores))
    return int(torch.multinomial(probs, 1, generator=generator))
