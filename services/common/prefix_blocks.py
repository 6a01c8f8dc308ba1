"""The names of a prompt's KV blocks: one hash chain over token ids, shared by every part.

A prompt's token ids are cut into full blocks of BLOCK_TOKENS; block k's hash covers block
k-1's hash and its own ids, so a hash names the whole prefix up to the end of its block (vLLM's
scheme). The engine keys its prefix cache by these hashes, the worker reports the ones it
holds, the router sends a prompt's chain in the ticket, and the scheduler's index matches the
two: all of them compute the same chain from the same ids, here.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

BLOCK_TOKENS = 16  # tokens per block: vLLM's default block size
MAX_TICKET_BLOCKS = 1024  # hashes a ticket may carry (16k prompt tokens): bounds its size
_ROOT = bytes(8)


def block_hashes(
    token_ids: Sequence[int], limit: int = MAX_TICKET_BLOCKS, parent_hash: int | None = None
) -> list[int]:
    """The hashes (unsigned 64-bit) of the first full blocks of `token_ids`, at most `limit`;
    with `parent_hash`, the chain goes on from that block (ids that follow its tokens)."""
    count = min(len(token_ids) // BLOCK_TOKENS, limit)
    hashes: list[int] = []
    parent = _ROOT if parent_hash is None else parent_hash.to_bytes(8, "little")
    for k in range(count):
        block = array("I", token_ids[k * BLOCK_TOKENS : (k + 1) * BLOCK_TOKENS])
        parent = hashlib.blake2b(parent + block.tobytes(), digest_size=8).digest()
        hashes.append(int.from_bytes(parent, "little"))
    return hashes


def reusable_blocks(prompt_tokens: int) -> int:
    """Blocks of a prompt whose KV may come from a cache: full blocks, short of the prompt's
    last token, which the model must run to give the first output token's logits."""
    return max(0, prompt_tokens - 1) // BLOCK_TOKENS
