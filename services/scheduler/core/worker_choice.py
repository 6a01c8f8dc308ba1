"""Which worker gets a request, among those with room for it: one policy, chosen in config.

- least_loaded (default): the most free slots, then the most free KV tokens, then the fewest
  leases.
- round_robin: in turn, per model.
- random: uniformly, from a seeded generator.
- least_latency: the lowest moving average of time to first token (unmeasured workers first,
  so every worker gets measured).
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

from services.scheduler.core.types import PendingRequest, WorkerRecord

VIRTUAL_NODES = 64  # ring points per worker: spreads keys evenly


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


POLICIES: dict[str, Callable[[int | None], PlacementPolicy]] = {
    "least_loaded": lambda seed: LeastLoaded(),
    "round_robin": lambda seed: RoundRobin(),
    "random": lambda seed: RandomChoice(seed),
    "least_latency": lambda seed: LeastLatency(),
    "prefix_affinity": lambda seed: PrefixAffinity(),
}


def make_policy(name: str, seed: int | None = None) -> PlacementPolicy:
    """The policy named in config. Raises ValueError for an unknown name."""
    if name not in POLICIES:
        raise ValueError(f"placement policy must be one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name](seed)
