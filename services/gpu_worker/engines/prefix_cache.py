"""An engine's prefix cache: the KV of full prompt blocks, least recently used out first.

Keys are block hashes (services.common.prefix_blocks): a block's hash covers every block
before it, so a lookup walks a prompt's chain from its start and stops at the first block not
held. Payloads are whatever the engine stores per block (the transformers engine: one tensor
of every layer's keys and values; the simulated engine: nothing). The engine thread looks up
and stores; the worker's session thread takes the events (blocks stored and removed since the
last take) and the full set, so both sides go through one lock.

Eviction order: a chain that is stored or used is touched from its last block to its first,
so a prefix's head outlives its tail and no cached block is left behind an evicted parent by
LRU alone (vLLM's free-queue order).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.prefix_blocks import BLOCK_TOKENS, reusable_blocks

MAX_PENDING_EVENTS = 4096  # stored/removed hashes held for the next report; past it, a resync


@dataclass
class CacheEvents:
    """What changed since the last report; `resync`: the report must carry the full set."""

    stored: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    resync: bool = False


class PrefixCache:
    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_blocks = max(0, capacity_tokens) // BLOCK_TOKENS
        self._blocks: OrderedDict[int, Any] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        # changes since the last report, net: a block stored then evicted (or evicted then
        # stored again) in between is not in it; True stored, False evicted
        self._pending: dict[int, bool] = {}
        self._resync = False
        self.queried_tokens = 0  # prompt tokens looked up since the engine started
        self.hit_tokens = 0  # of those, found cached

    @property
    def enabled(self) -> bool:
        return self.capacity_blocks > 0

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, hashes: Sequence[int], prompt_tokens: int) -> list[Any]:
        """The payloads of the longest cached run of a prompt's chain `hashes` from its start,
        short of the prompt's last token (`reusable_blocks`); touches them. `prompt_tokens`:
        the prompt's length (it also feeds the hit-rate counters)."""
        found: list[Any] = []
        hashes = hashes[: reusable_blocks(prompt_tokens)]
        with self._lock:
            blocks = self._blocks
            for h in hashes:
                if h not in blocks:
                    break
                found.append(blocks[h])
            for h in reversed(hashes[: len(found)]):
                self._blocks.move_to_end(h)
            self.queried_tokens += prompt_tokens
            self.hit_tokens += len(found) * BLOCK_TOKENS
        return found

    def store(self, hashes: Sequence[int], payloads: Sequence[Any]) -> None:
        """Adds blocks not held yet (a chain's continuation), then evicts past capacity."""
        with self._lock:
            for h, payload in zip(hashes, payloads, strict=True):
                if h not in self._blocks:
                    self._blocks[h] = payload
                    self._note(h, stored=True)
            for h in reversed(hashes):  # the head last: the most recently used
                self._blocks.move_to_end(h)
            self._evict_to(self.capacity_blocks)

    def shrink_to(self, blocks: int) -> None:
        """Evicts down to `blocks` (the room the running batch leaves in the KV budget)."""
        with self._lock:
            self._evict_to(min(blocks, self.capacity_blocks))

    def remove(self, hashes: Sequence[int]) -> None:
        """Drops blocks its engine evicted (an engine that evicts by itself: vLLM)."""
        with self._lock:
            for h in hashes:
                if h in self._blocks:
                    del self._blocks[h]
                    self._note(h, stored=False)

    def take_events(self) -> CacheEvents:
        with self._lock:
            pending, resync = self._pending, self._resync
            self._pending, self._resync = {}, False
        if resync:
            return CacheEvents(resync=True)
        return CacheEvents(
            stored=[h for h, stored in pending.items() if stored],
            removed=[h for h, stored in pending.items() if not stored],
        )

    def held(self) -> list[int]:
        """Every block held now, oldest first (what a re-registering worker announces)."""
        with self._lock:
            return list(self._blocks)

    def clear(self) -> None:
        with self._lock:
            self._evict_to(0)

    def _evict_to(self, blocks: int) -> None:
        while len(self._blocks) > max(0, blocks):
            h, _ = self._blocks.popitem(last=False)
            self._note(h, stored=False)

    def _note(self, h: int, stored: bool) -> None:
        if self._resync:
            return
        if self._pending.get(h) is (not stored):
            del self._pending[h]  # undoes a change not reported yet
            return
        self._pending[h] = stored
        if len(self._pending) > MAX_PENDING_EVENTS:
            self._pending, self._resync = {}, True
