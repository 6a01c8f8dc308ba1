"""A timing model of a big model on a big GPU, for models no laptop can run.

Sequences advance in shared steps like a continuously batched GPU engine: each step emits one
token for every running sequence and lasts `decode_ms_per_step * (1 + batch_slowdown *
(batch - 1))`. A new sequence first waits out its prefill (prompt tokens / prefill rate).
The text is deterministic: words drawn by a PRNG seeded from the prompt and the seed, so the
same request always streams the same text at the same pace. Runs on the worker's event loop
(it only sleeps), so it costs no model compute.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
import time
from dataclasses import dataclass, field

from services.common.catalog import ModelSpec
from services.common.errors import InvalidArgument, Unavailable
from services.gpu_worker.engines.base import (
    EngineStats,
    Finished,
    FinishReason,
    GenerationInput,
    ModelState,
    Sink,
    TextDelta,
)
from services.gpu_worker.engines.text import StopMatcher

RATE_WINDOW_S = 5.0

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


def prompt_token_estimate(prompt: str) -> int:
    """About four characters a token, as for English with a BPE vocabulary."""
    return max(1, (len(prompt) + 3) // 4)


def step_seconds(spec: ModelSpec, batch: int) -> float:
    sim = spec.simulation
    return sim.decode_ms_per_step * (1.0 + sim.batch_slowdown * max(0, batch - 1)) / 1000.0


@dataclass
class _SimSequence:
    request: GenerationInput
    sink: Sink
    ready_at: float  # monotonic seconds when prefill is done
    prompt_tokens: int
    rng: random.Random
    stops: StopMatcher
    generated: int = 0
    cancelled: bool = False
    finished: bool = field(default=False)

    def cancel(self) -> None:
        self.cancelled = True


class SimulatedEngine:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.state = ModelState.LOADING
        self.healthy = True
        self._running: list[_SimSequence] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._produced: collections.deque[float] = collections.deque()  # token times

    def load(self) -> None:
        self.state = ModelState.READY

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for seq in self._running:
            seq.sink(Unavailable(f"model {self.spec.model_id} stopped"))
        self._running.clear()

    def active_sequences(self) -> int:
        return len(self._running)

    def stats(self) -> EngineStats:
        now = time.monotonic()
        while self._produced and now - self._produced[0] > RATE_WINDOW_S:
            self._produced.popleft()
        return EngineStats(
            running=len(self._running),
            kv_tokens_used=sum(s.prompt_tokens + s.generated for s in self._running),
            kv_tokens_capacity=self.spec.max_batch_tokens,
            tokens_per_second=len(self._produced) / RATE_WINDOW_S,
            memory_bytes=self.spec.simulation.memory_bytes,
        )

    def submit(self, request: GenerationInput, sink: Sink) -> _SimSequence:
        """Must be called on the worker's event loop."""
        prompt_tokens = prompt_token_estimate(request.prompt)
        seed = hashlib.sha256(f"{request.sampling.seed}|{request.prompt}".encode()).digest()
        sim = self.spec.simulation
        seq = _SimSequence(
            request=request,
            sink=sink,
            ready_at=time.monotonic() + prompt_tokens / sim.prefill_tokens_per_s,
            prompt_tokens=prompt_tokens,
            rng=random.Random(seed),
            stops=StopMatcher(request.sampling.stop),
        )
        if self._closed:
            sink(Unavailable(f"model {self.spec.model_id} is shutting down"))
            return seq
        if prompt_tokens + request.max_tokens > self.spec.max_context_tokens:
            sink(
                InvalidArgument(
                    f"prompt ({prompt_tokens} tokens) plus max_tokens ({request.max_tokens}) "
                    f"exceeds the context of {self.spec.model_id} ({self.spec.max_context_tokens})"
                )
            )
            return seq
        self._running.append(seq)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        assert self._wake is not None
        self._wake.set()
        return seq

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closed:
            self._running = [s for s in self._running if not (s.cancelled or s.finished)]
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(step_seconds(self.spec, len(self._running)))
            now = time.monotonic()
            for seq in self._running:
                if not seq.cancelled and not seq.finished and seq.ready_at <= now:
                    self._emit(seq)

    def _emit(self, seq: _SimSequence) -> None:
        word = seq.rng.choice(WORDS)
        piece = word.capitalize() if seq.generated == 0 else " " + word
        seq.generated += 1
        self._produced.append(time.monotonic())
        text, stopped = seq.stops.push(piece)
        if not stopped and seq.generated >= seq.request.max_tokens:
            text += seq.stops.flush()
        seq.sink(TextDelta(text, 1))
        if stopped or seq.generated >= seq.request.max_tokens:
            reason = FinishReason.STOP if stopped else FinishReason.LENGTH
            seq.sink(Finished(reason, seq.prompt_tokens, seq.generated))
            seq.finished = True
