"""A running batch over one left-padded KV cache: the core of our continuous batching.

Rows are sequences. Every row's next token is written at the same cache column, so one
forward pass advances all rows; left padding (masked out, with per-row position ids) lets
sequences of different lengths share the cache. Between steps, rows join (`merge`, padding
the shorter cache on the left) and leave (`select`, then dropping columns that are padding
in every row) — the scheme of TGI's Python CausalLM batch, on transformers' DynamicCache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


@dataclass
class KvBatch:
    cache: DynamicCache  # per layer: keys/values [rows, kv_heads, columns, head_dim]
    mask: torch.Tensor  # [rows, columns] long: 1 for a real token, 0 for left padding
    last_logits: torch.Tensor  # [rows, vocab] float: logits of each row's next token

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    def kv_bytes(self) -> int:
        return sum(
            layer.keys.numel() * layer.keys.element_size() * 2 for layer in self.cache.layers
        )


@dataclass
class Prefix:
    """Cached prompt prefixes of a batch's rows, left-padded: what `prefill` continues."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # keys, values [rows, kv_heads, columns, d]
    mask: torch.Tensor  # [rows, columns] long


@torch.inference_mode()
def gather(rows: list[list[torch.Tensor]]) -> Prefix | None:
    """The prefix of each row from its cached blocks (`blocks_of` payloads, in chain order; a
    row may have none); None when no row has any."""
    lengths = [sum(int(b.shape[3]) for b in blocks) for blocks in rows]
    width = max(lengths, default=0)
    if width == 0:
        return None
    first = next(b for blocks in rows for b in blocks)  # [layers, 2, heads, block, d]
    shape = first.shape
    out = first.new_zeros((len(rows), shape[0], 2, shape[2], width, shape[4]))
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=first.device)
    for row, (blocks, length) in enumerate(zip(rows, lengths, strict=True)):
        if length:
            out[row, :, :, :, width - length :] = torch.cat(blocks, dim=3)
            mask[row, width - length :] = 1
    layers = [(out[:, i, 0].contiguous(), out[:, i, 1].contiguous()) for i in range(shape[0])]
    return Prefix(layers, mask)


@torch.inference_mode()
def blocks_of(batch: KvBatch, row: int, start: int, end: int, size: int) -> list[torch.Tensor]:
    """Copies of row `row`'s KV for its real tokens [start, end) (a whole number of `size`-token
    blocks), one tensor [layers, 2, kv_heads, size, d] per block: what a prefix cache keeps."""
    columns = batch.mask[row].nonzero().squeeze(-1)[start:end]
    stacked = torch.stack(
        [
            torch.stack([layer.keys[row][:, columns], layer.values[row][:, columns]])
            for layer in batch.cache.layers
        ]
    )
    return [block.clone() for block in stacked.split(size, dim=3)]


@torch.inference_mode()
def prefill(
    model: Any, prompts: list[list[int]], device: str, prefix: Prefix | None = None
) -> KvBatch:
    """Runs the prompts as one left-padded batch; returns their cache and next-token logits.

    With `prefix` (each row's cached prompt prefix, from `gather`), `prompts` are the parts
    after it: each row's cache becomes [padding | prefix | padding | rest] and only the rest is
    computed (prefix caching); positions follow the mask, so the padding between is skipped.
    """
    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros((rows, width), dtype=torch.long, device=device)
    mask = torch.zeros((rows, width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
        mask[row, width - len(prompt) :] = 1
    cache = DynamicCache()
    if prefix is not None:
        for i, (keys, values) in enumerate(prefix.layers):
            cache.update(keys, values, i)
        mask = torch.cat([prefix.mask, mask], dim=-1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, mask.shape[1] - width :]
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return KvBatch(out.past_key_values, mask, out.logits[:, -1, :].float())


@torch.inference_mode()
def decode(model: Any, batch: KvBatch, tokens: torch.Tensor) -> None:
    """Feeds one token per row ([rows] long) and stores the logits of the next one."""
    positions = batch.mask.sum(-1, keepdim=True)  # real tokens so far = the new token's position
    mask = torch.cat([batch.mask, torch.ones_like(positions)], dim=-1)
    out = model(
        input_ids=tokens[:, None],
        attention_mask=mask,
        position_ids=positions,
        past_key_values=batch.cache,
        use_cache=True,
    )
    batch.mask = mask
    batch.cache = out.past_key_values
    batch.last_logits = out.logits[:, -1, :].float()


def merge(a: KvBatch, b: KvBatch) -> KvBatch:
    """One batch with a's rows then b's, left-padded to the longer cache."""
    width = max(a.columns, b.columns)
    cache = DynamicCache()
    for layer_a, layer_b in zip(a.cache.layers, b.cache.layers, strict=True):
        keys = torch.cat([_pad_left(layer_a.keys, width), _pad_left(layer_b.keys, width)])
        values = torch.cat([_pad_left(layer_a.values, width), _pad_left(layer_b.values, width)])
        cache.update(keys, values, len(cache.layers))
    mask = torch.cat([_pad_left(a.mask, width), _pad_left(b.mask, width)])
    return KvBatch(cache, mask, torch.cat([a.last_logits, b.last_logits]))


def select(batch: KvBatch, keep: list[int]) -> KvBatch:
    """The batch with only rows `keep` (in that order), without all-padding columns."""
    index = torch.tensor(keep, dtype=torch.long, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    start = int(mask.any(0).long().argmax())  # first column some kept row uses
    cache = DynamicCache()
    for i, layer in enumerate(batch.cache.layers):
        keys = layer.keys.index_select(0, index)[:, :, start:, :]
        values = layer.values.index_select(0, index)[:, :, start:, :]
        cache.update(keys.contiguous(), values.contiguous(), i)
    return KvBatch(cache, mask[:, start:].contiguous(), batch.last_logits.index_select(0, index))


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Pads the column axis (dim -2 for KV [r, h, c, d], dim -1 for masks [r, c]) with zeros."""
    column_dim = -1 if tensor.dim() == 2 else -2
    missing = width - tensor.shape[column_dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[column_dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=column_dim)
