"""Token counts estimated before a model's tokenizer has seen the text."""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """About four characters a token, as for English with a BPE vocabulary (at least 1)."""
    return max(1, (len(text) + 3) // 4)
