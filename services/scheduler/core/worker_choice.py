"""Which worker gets a request, among those with room for it: one policy, chosen in config.

- least_loaded (default): the most free slots, then the most free KV tokens, then the fewest
  leases.
- round_robin: in turn, per model.
- random: uniformly, from a seeded generator.
- least_latency: the lowest moving average of time to first token (unmeasured workers first,
  so every worker gets measured).
- kv_aware (default): the worker whose prefix cache holds the longest start of the prompt's
  block chain (core.prefix_index), weighed against its load: the lowest cost of prompt tokens
  still to prefill there plus LOAD_WEIGHT times the KV tokens its leases reserve (Dynamo's KV
  router's cost, prefill blocks plus decode blocks, with decode weighed less: a running
  sequence slows a step by a fraction, a prefill is the first token's whole wait). Without
  blocks in the request, least_loaded.
- prefix_affinity: consistent hashing of the prompt's first characters onto the workers that
  serve the model, so a repeated prefix lands where its KV cache is warm; if that worker is
  full the next one round the ring with room takes it. Workers joining or leaving move only
  the keys next to them on the ring.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable
from typing import Protocol

from services.common.prefix_blocks import BLOCK_TOKENS
from services.scheduler.core.prefix_index import PrefixIndex
from services.scheduler.core.types import PendingRequest, WorkerRecord

VIRTUAL_NODES = 64  # ring points per worker: spreads keys evenly
# kv_aware: KV tokens reserved on a worker that weigh as much as one prompt token to prefill
# there; a worker caching a 1,000-token prefix wins until it holds about 4,000 more KV tokens
LOAD_WEIGHT = 0.25


class PlacementPolicy(Protocol):
    def choose(
        self, candidates: list[WorkerRecord], request: PendingRequest, serving: list[WorkerRecord]
    ) -> WorkerRecord:
        """Picks one of `candidates` (non-empty; all have room for the request). `serving` is
        every worker that has the model ready, full or not."""


def _load_key(worker: WorkerRecord, model_id: str) -> tuple[float, float, int]:
    slots = worker.models[model_id]
    return (slots.free, slots.kv_room(), -len(worker.leases))


class LeastLoaded:
    def choose(self, candidates, request, serving):
        return max(candidates, key=lambda w: _load_key(w, request.model_id))


class RoundRobin:
    def __init__(self) -> None:
        self._turn: dict[str, int] = {}

    def choose(self, candidates, request, serving):
        turn = self._turn.get(request.model_id, 0)
        self._turn[request.model_id] = turn + 1
        ordered = sorted(candidates, key=lambda w: w.worker_id)
        return ordered[turn % len(ordered)]


class RandomChoice:
    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, candidates, request, serving):
        return self._rng.choice(sorted(candidates, key=lambda w: w.worker_id))


class LeastLatency:
    def choose(self, candidates, request, serving):
        return min(
            candidates,
            key=lambda w: (
                w.latency_ms if w.latency_ms is not None else -1.0,
                tuple(-x for x in _load_key(w, request.model_id)),
            ),
        )


class KvAware:
    def __init__(self, index: PrefixIndex) -> None:
        self._index = index
        self._fallback = LeastLoaded()

    def choose(self, candidates, request, serving):
        if not request.prefix_blocks or len(candidates) == 1:
            return self._fallback.choose(candidates, request, serving)
        model_id = request.model_id
        lead = self._index.leading(
            model_id, request.prefix_blocks, {w.worker_id for w in candidates}
        )

        def cost(worker: WorkerRecord) -> tuple[float, tuple[float, float, int]]:
            uncached = max(0, request.prompt_tokens - lead[worker.worker_id] * BLOCK_TOKENS)
            free, room, leases = _load_key(worker, model_id)
            load = LOAD_WEIGHT * worker.models[model_id].kv_reserved
            return uncached + load, (-free, -room, -leases)

        return min(candidates, key=cost)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class PrefixAffinity:
    def __init__(self, fallback: PlacementPolicy | None = None) -> None:
        self._fallback = fallback or LeastLoaded()
        self._rings: dict[str, tuple[frozenset[str], list[int], list[str]]] = {}

    def choose(self, candidates, request, serving):
        if not request.affinity_key:
            return self._fallback.choose(candidates, request, serving)
        points, owners = self._ring(request.model_id, serving or candidates)
        by_id = {w.worker_id: w for w in candidates}
        start = bisect.bisect(points, _hash(request.affinity_key))
        for i in range(len(points)):
            owner = owners[(start + i) % len(points)]
            if owner in by_id:
                return by_id[owner]
        return self._fallback.choose(candidates, request, serving)

    def _ring(self, model_id: str, workers: list[WorkerRecord]) -> tuple[list[int], list[str]]:
        members = frozenset(w.worker_id for w in workers)
        cached = self._rings.get(model_id)
        if cached is None or cached[0] != members:
            ring = sorted(
                (_hash(f"{worker_id}#{i}"), worker_id)
                for worker_id in members
                for i in range(VIRTUAL_NODES)
            )
            cached = (members, [p for p, _ in ring], [w for _, w in ring])
            self._rings[model_id] = cached
        return cached[1], cached[2]


POLICIES: dict[str, Callable[[int | None, PrefixIndex], PlacementPolicy]] = {
    "kv_aware": lambda seed, index: KvAware(index),
    "least_loaded": lambda seed, index: LeastLoaded(),
    "round_robin": lambda seed, index: RoundRobin(),
    "random": lambda seed, index: RandomChoice(seed),
    "least_latency": lambda seed, index: LeastLatency(),
    "prefix_affinity": lambda seed, index: PrefixAffinity(),
}


def make_policy(
    name: str, seed: int | None = None, index: PrefixIndex | None = None
) -> PlacementPolicy:
    """The policy named in config, reading `index` where it places by cached prefixes.
    Raises ValueError for an unknown name."""
    if name not in POLICIES:
        raise ValueError(f"placement policy must be one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name](seed, index if index is not None else PrefixIndex())
