"""One generating sequence: its sampling state, text assembly and finishing rules.

Engine-agnostic: the engine feeds it each sampled token with `accept`, and it reports deltas
and the final event to the request's sink.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from services.gpu_worker.engines.base import (
    Finished,
    FinishReason,
    GenerationInput,
    Sink,
    TextDelta,
)
from services.gpu_worker.engines.text import IncrementalDetokenizer, StopMatcher


@dataclass
class Sequence:
    request: GenerationInput
    sink: Sink
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)  # generated here (to rebuild a row)
    block_hashes: list[int] = field(default_factory=list)  # the prompt's full blocks
    cached_prompt_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    generated: int = 0
    generator: Any = None  # torch.Generator for sampled decoding; None when greedy
    detok: IncrementalDetokenizer | None = None
    stops: StopMatcher | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    _announced: bool = False  # the prompt's length went out with the first delta

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def kv_tokens(self) -> int:
        """KV-cache tokens this sequence may come to hold: prompt (with any resumed text)
        plus the tokens it may still generate."""
        return len(self.prompt_ids) + self.request.remaining_tokens

    @property
    def cached_tokens(self) -> int:
        return len(self.prompt_ids) + self.generated

    def holds_eos(self) -> bool:
        """The end-of-sequence token may not be taken now (ignore_eos, or min_tokens)."""
        sampling = self.request.sampling
        return sampling.ignore_eos or self.generated < sampling.min_tokens

    def accept(self, token: int, eos: set[int]) -> bool:
        """Takes the next token; emits text and, at the end, Finished. False when finished."""
        assert self.detok is not None and self.stops is not None
        if token in eos:
            self._delta(self.stops.flush() + self.detok.flush(), 0)
            return self._finish(FinishReason.STOP)
        self.generated += 1
        self.output_ids.append(token)
        text, stopped = self.stops.push(self.detok.push(token))
        if stopped:
            self._delta(text, 1)
            return self._finish(FinishReason.STOP)
        if self.generated >= self.request.max_tokens:
            tail, _ = self.stops.push(self.detok.flush())
            self._delta(text + tail + self.stops.flush(), 1)
            return self._finish(FinishReason.LENGTH)
        self._delta(text, 1)
        return True

    def _delta(self, text: str, tokens: int) -> None:
        """Emits text; the first delta also says how long the prompt was."""
        prompt = 0 if self._announced else len(self.prompt_ids)
        self._announced = True
        self.sink(TextDelta(text, tokens, prompt))

    def _finish(self, reason: FinishReason) -> bool:
        generated_here = self.generated - self.request.resume_tokens
        self.sink(Finished(reason, len(self.prompt_ids), generated_here, self.cached_prompt_tokens))
        return False
