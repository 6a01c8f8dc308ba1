"""The engine interface: what every model engine (real or simulated) offers the worker.

An engine runs sequences on its own thread or task and reports each sequence's progress to a
`Sink`: zero or more `TextDelta`, then exactly one `Finished` or one exception
(`services.common.errors.ServiceError` for a request problem, anything else for an engine
fault). A sink must be safe to call from any thread.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from services.common.catalog import ModelSpec


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


@dataclass(frozen=True)
class EngineStats:
    """Figures an engine reports in heartbeats."""

    running: int  # sequences admitted or waiting, not finished
    kv_tokens_used: int  # tokens held in the KV cache now
    kv_tokens_capacity: int  # the engine's KV-token budget
    tokens_per_second: float  # generated, over the last few seconds
    memory_bytes: int  # weights (and fixed buffers) the model holds on its device


Event = TextDelta | Finished | BaseException
Sink = Callable[[Event], None]


class SequenceHandle(Protocol):
    def cancel(self) -> None:
        """Stops the sequence at the next step and frees its cache. Idempotent."""


class Engine(Protocol):
    spec: ModelSpec
    state: ModelState
    healthy: bool  # False after a device or runtime fault: the worker stops taking work

    def load(self) -> None:
        """Loads weights. Blocking: the worker calls it in a thread."""

    def submit(self, request: GenerationInput, sink: Sink) -> SequenceHandle:
        """Starts a sequence; returns at once. Progress goes to `sink`."""

    def active_sequences(self) -> int:
        """Sequences admitted and not yet finished."""

    def stats(self) -> EngineStats:
        """Current figures for heartbeats."""

    def close(self) -> None:
        """Stops the engine; running sequences get an error event."""
