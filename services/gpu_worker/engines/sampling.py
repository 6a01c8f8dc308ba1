"""Next-token selection from logits: greedy, or temperature / top-k / top-p sampling."""

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
    scores = logits.float() / options.temperature
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
    return int(torch.multinomial(probs, 1, generator=generator))
