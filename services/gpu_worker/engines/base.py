"""The engine interfaces: what model engines (real or simulated) offer the worker, by kind.

Every engine implements `Engine` (load, health, stats, close) and exactly one kind:
`GenerativeEngine` runs sequences (`submit`), `EmbeddingEngine` embeds texts (`embed`).
An engine works on its own thread or task and reports each request's progress to a `Sink`:
for a sequence zero or more `TextDelta`, then exactly one `Finished`; for an embedding one
`Embeddings`; or else one exception (`services.common.errors.ServiceError` for a request
problem, anything else for an engine fault). A sink must be safe to call from any thread.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from services.common.catalog import ModelSpec
from services.gpu_worker.engines.prefix_cache import PrefixCache


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class FinishReason(enum.Enum):
    LENGTH = "length"
    STOP = "stop"


# Below this temperature sampling is greedy: dividing logits by a vanishing temperature
# overflows to inf and NaN, and the distribution is one token anyway.
MIN_SAMPLING_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0  # 0 (or below MIN_SAMPLING_TEMPERATURE) = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate past the end-of-sequence token
    min_tokens: int = 0  # no end-of-sequence before this many tokens

    @property
    def greedy(self) -> bool:
        return not self.temperature >= MIN_SAMPLING_TEMPERATURE  # NaN is greedy too


@dataclass(frozen=True)
class GenerationInput:
    request_id: str
    prompt: str
    max_tokens: int  # the request's whole budget, resumed tokens included
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    resume_text: str = ""  # generated before the request moved here: continue after it
    resume_tokens: int = 0  # tokens of resume_text, already counted against max_tokens
    priority_rank: int = 1  # 0 high, 1 medium, 2 low (convert.py): for engines with a queue

    @property
    def remaining_tokens(self) -> int:
        return self.max_tokens - self.resume_tokens


@dataclass(frozen=True)
class TextDelta:
    text: str  # may be empty while a multi-byte character is incomplete
    token_count: int
    prompt_tokens: int = 0  # set on a sequence's first delta


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0  # of prompt_tokens, those the prefix cache held


@dataclass(frozen=True)
class Embeddings:
    """The final event of an embedding request."""

    vectors: list[list[float]]
    prompt_tokens: int


RATE_WINDOW_S = 5.0  # an engine's tokens (or texts) per second cover this long


@dataclass(frozen=True)
class EngineStats:
    """Figures an engine reports in heartbeats."""

    running: int  # sequences admitted or waiting, not finished
    kv_tokens_used: int  # tokens held in the KV cache now
    kv_tokens_capacity: int  # the engine's KV-token budget
    tokens_per_second: float  # generated, over the last few seconds
    memory_bytes: int  # weights (and fixed buffers) the model holds on its device
    max_slots: int  # sequences the engine runs at once: what leases may promise
    # the engine's own view, where it has one (vLLM): its running and waiting requests, and
    # the prompt tokens its prefix cache was asked for and found (totals since it started)
    engine_running: int = 0
    engine_waiting: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0


Event = TextDelta | Finished | Embeddings | BaseException
Sink = Callable[[Event], None]


class SequenceHandle(Protocol):
    def cancel(self) -> None:
        """Stops the sequence at the next step and frees its cache. Idempotent."""


class Engine(Protocol):
    """What the worker needs of any engine, whatever its kind."""

    spec: ModelSpec
    state: ModelState
    healthy: bool  # False after a device or runtime fault: the worker stops taking work
    prefix_cache: PrefixCache | None  # the blocks it caches, where it keeps them itself

    def load(self) -> None:
        """Loads weights. Blocking: the worker calls it in a thread."""

    def active_sequences(self) -> int:
        """Requests admitted and not yet finished."""

    def stats(self) -> EngineStats:
        """Current figures for heartbeats."""

    def close(self) -> None:
        """Stops the engine; running requests get an error event."""


class GenerativeEngine(Engine, Protocol):
    def submit(self, request: GenerationInput, sink: Sink) -> SequenceHandle:
        """Starts a sequence; returns at once. Progress goes to `sink`."""


class EmbeddingEngine(Engine, Protocol):
    def embed(self, texts: list[str], sink: Sink) -> SequenceHandle:
        """Queues texts; returns at once. The sink gets one `Embeddings` or an error."""
