"""A timing model of a big model on a big GPU, for models no laptop can run.

Sequences advance in shared steps like a continuously batched GPU engine: each step emits one
token for every running sequence and lasts `decode_ms_per_step * (1 + batch_slowdown *
(batch - 1))`. A new sequence first waits out its prefill: the prompt tokens its prefix
cache does not hold (blocks of simulated token ids, `prompt_encoding.simulated_token_ids`;
LRU, in the part of the KV capacity the running sequences leave free) over the prefill rate.
The text is deterministic: words drawn by a PRNG seeded from the prompt and the seed, so the
same request always streams the same text at the same pace. Runs on the worker's event loop
(it only sleeps), so it costs no model compute.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
import time
from dataclasses import dataclass, field

from services.common.catalog import GpuProfile, ModelSpec
from services.common.errors import Unavailable
from services.common.prefix_blocks import BLOCK_TOKENS, block_hashes
from services.common.prompt_encoding import simulated_token_ids
from services.common.windowed import SlidingWindow
from services.gpu_worker.engines.admission import admit_in_order, context_error
from services.gpu_worker.engines.base import (
    RATE_WINDOW_S,
    EngineStats,
    Finished,
    FinishReason,
    GenerationInput,
    ModelState,
    Sink,
    TextDelta,
)
from services.gpu_worker.engines.prefix_cache import PrefixCache
from services.gpu_worker.engines.text import StopMatcher

log = logging.getLogger(__name__)

WORDS = [
    "the",
    "model",
    "streams",
    "tokens",
    "from",
    "a",
    "simulated",
    "accelerator",
    "while",
    "the",
    "scheduler",
    "keeps",
    "every",
    "lease",
    "honest",
    "and",
    "the",
    "router",
    "guards",
    "the",
    "door",
    "so",
    "each",
    "tenant",
    "gets",
    "a",
    "fair",
    "share",
    "of",
    "the",
    "fleet",
    "under",
    "load",
    "with",
    "low",
    "latency",
    "high",
    "throughput",
    "and",
    "graceful",
    "degradation",
    "when",
    "GPUs",
    "are",
    "busy",
    "serving",
    "requests",
    "in",
    "priority",
    "order",
]


def step_seconds(profile: GpuProfile, batch: int) -> float:
    slowdown = 1.0 + profile.batch_slowdown * max(0, batch - 1)
    return profile.decode_ms_per_step * slowdown / 1000.0


@dataclass
class _SimSequence:
    request: GenerationInput
    sink: Sink
    prompt_tokens: int
    rng: random.Random
    stops: StopMatcher
    generated: int = 0
    cancelled: bool = False
    finished: bool = field(default=False)
    ready_at: float = float("inf")  # monotonic seconds when prefill is done, once admitted
    blocks: list[int] = field(default_factory=list)  # its prompt's block hashes
    cached_tokens: int = 0  # prompt tokens its prefix cache held

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.request.remaining_tokens


class SimulatedEngine:
    def __init__(self, spec: ModelSpec, device_name: str = "") -> None:
        self.spec = spec
        self.profile = spec.simulation.profile_for(device_name)
        self.state = ModelState.LOADING
        self.healthy = True
        capacity = min(spec.prefix_cache_tokens, self.profile.kv_capacity_tokens)
        self.prefix_cache = PrefixCache(capacity)
        self._running: list[_SimSequence] = []
        self._waiting: collections.deque[_SimSequence] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._produced = SlidingWindow(RATE_WINDOW_S)  # tokens

    def load(self) -> None:
        self.state = ModelState.READY

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for seq in [*self._running, *self._waiting]:
            seq.sink(Unavailable(f"model {self.spec.model_id} stopped"))
        self._running.clear()
        self._waiting.clear()

    def active_sequences(self) -> int:
        return len(self._running) + len(self._waiting)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self.active_sequences(),
            kv_tokens_used=sum(s.prompt_tokens + s.generated for s in self._running),
            kv_tokens_capacity=self.profile.kv_capacity_tokens,
            tokens_per_second=self._produced.per_second(),
            memory_bytes=self.spec.simulation.memory_bytes,
            max_slots=self.spec.max_slots,
            prefix_cache_queries=self.prefix_cache.queried_tokens,
            prefix_cache_hits=self.prefix_cache.hit_tokens,
        )

    def submit(self, request: GenerationInput, sink: Sink) -> _SimSequence:
        """Must be called on the worker's event loop."""
        ids = simulated_token_ids(request.prompt + request.resume_text)
        prompt_tokens = len(ids)
        seed = hashlib.sha256(f"{request.sampling.seed}|{request.prompt}".encode()).digest()
        seq = _SimSequence(
            request=request,
            sink=sink,
            prompt_tokens=prompt_tokens,
            rng=random.Random(seed),
            stops=StopMatcher(request.sampling.stop),
            generated=request.resume_tokens,
            blocks=block_hashes(ids, limit=len(ids)) if self.prefix_cache.enabled else [],
        )
        for _ in range(request.resume_tokens):  # a resumed text continues where it stopped
            seq.rng.choice(WORDS)
        if self._closed:
            sink(Unavailable(f"model {self.spec.model_id} is shutting down"))
            return seq
        limit = self.spec.max_context_tokens
        error = context_error(self.spec.model_id, prompt_tokens, request.remaining_tokens, limit)
        if error is not None:
            sink(error)
            return seq
        self._waiting.append(seq)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        assert self._wake is not None
        self._wake.set()
        return seq

    async def _run(self) -> None:
        """The engine's task; if it raises, the engine is unhealthy and every sequence fails
        (its worker is replaced), rather than a task dying silently."""
        try:
            await self._steps()
        except Exception:
            log.exception("the simulated engine %s failed; it is unhealthy", self.spec.model_id)
            self.healthy = False
            for seq in [*self._running, *self._waiting]:
                seq.sink(Unavailable(f"model {self.spec.model_id} failed on this worker"))
            self._running.clear()
            self._waiting.clear()

    async def _steps(self) -> None:
        assert self._wake is not None
        while not self._closed:
            self._running = [s for s in self._running if not (s.cancelled or s.finished)]
            self._admit()
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(step_seconds(self.profile, len(self._running)))
            now = time.monotonic()
            for seq in self._running:
                if not seq.cancelled and not seq.finished and seq.ready_at <= now:
                    self._emit(seq)

    def _admit(self) -> None:
        """Moves waiting sequences into the batch while the KV capacity allows."""
        free = self.profile.kv_capacity_tokens - sum(s.kv_tokens for s in self._running)
        joining = admit_in_order(
            self._waiting,
            free,
            len(self._running),
            size=lambda s: s.kv_tokens,
            cancelled=lambda s: s.cancelled,
        )
        cache = self.prefix_cache
        for seq in joining:
            seq.cached_tokens = len(cache.lookup(seq.blocks, seq.prompt_tokens)) * BLOCK_TOKENS
            cache.store(seq.blocks, [None] * len(seq.blocks))
            prefill = seq.prompt_tokens - seq.cached_tokens
            seq.ready_at = time.monotonic() + prefill / self.profile.prefill_tokens_per_s
            self._running.append(seq)
        left = free - sum(s.kv_tokens for s in joining)
        cache.shrink_to(left // BLOCK_TOKENS)

    def _emit(self, seq: _SimSequence) -> None:
        word = seq.rng.choice(WORDS)
        piece = word.capitalize() if seq.generated == 0 else " " + word
        seq.generated += 1
        self._produced.add()
        text, stopped = seq.stops.push(piece)
        if not stopped and seq.generated >= seq.request.max_tokens:
            text += seq.stops.flush()
        first = seq.generated == seq.request.resume_tokens + 1
        seq.sink(TextDelta(text, 1, seq.prompt_tokens if first else 0))
        if stopped or seq.generated >= seq.request.max_tokens:
            reason = FinishReason.STOP if stopped else FinishReason.LENGTH
            generated_here = seq.generated - seq.request.resume_tokens
            seq.sink(Finished(reason, seq.prompt_tokens, generated_here, seq.cached_tokens))
            seq.finished = True
