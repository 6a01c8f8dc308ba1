"""Heaps with lazy deletion, as the core's indexes keep them.

An entry ends with the version of what it indexes and that thing's key: `(..., version,
key)`. When the thing is indexed again its version moves on and the old entry is stale; a
stale entry is dropped when it reaches the top. One left below a long-lived top (a request
waiting for hours, a busy worker) would stay, so a heap whose entries outnumber the things
indexed `COMPACT_FACTOR` times over is rebuilt from its live entries: amortized O(1) a push.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappush
from typing import Any

COMPACT_FACTOR = 4


def push(heap: list, entry: tuple, indexed: int, version_of: Callable[[Any], int | None]):
    """Pushes `entry`; `indexed`: how many things the heap's owner indexes now;
    `version_of(key)`: the current version of a thing (None once it is gone)."""
    heappush(heap, entry)
    if len(heap) > COMPACT_FACTOR * indexed + 64:
        heap[:] = [e for e in heap if version_of(e[-1]) == e[-2]]
        heapify(heap)
