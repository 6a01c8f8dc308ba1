"""A causal LM run with PyTorch through transformers, on its own thread.

The engine thread owns the model. Each iteration it admits new sequences and advances every
running sequence by one token (prefill on a sequence's first step, then one decode step over
its KV cache), so sequences join and leave between steps and stream as they go. Steps are
interleaved per sequence; batching them into one forward pass is the continuous-batching work
that comes next, behind this same interface.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.catalog import ModelSpec
from services.common.errors import InvalidArgument, Unavailable
from services.gpu_worker.engines.base import (
    Finished,
    FinishReason,
    GenerationInput,
    ModelState,
    Sink,
    TextDelta,
)
from services.gpu_worker.engines.text import IncrementalDetokenizer, StopMatcher

log = logging.getLogger(__name__)


@dataclass
class _Sequence:
    request: GenerationInput
    sink: Sink
    cancelled: threading.Event = field(default_factory=threading.Event)
    input_ids: Any = None  # prompt ids (1, n) until prefilled
    past: Any = None  # KV cache
    last_token: int = -1
    prompt_tokens: int = 0
    generated: int = 0
    detok: IncrementalDetokenizer | None = None
    stops: StopMatcher | None = None
    generator: Any = None

    def cancel(self) -> None:
        self.cancelled.set()


class TransformersEngine:
    def __init__(self, spec: ModelSpec, cache_dir: Path, device: str) -> None:
        self.spec = spec
        self.state = ModelState.LOADING
        self.healthy = True
        self.device = device
        self._cache_dir = cache_dir
        self._tokenizer: Any = None
        self._model: Any = None
        self._eos: set[int] = set()
        self._incoming: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        from services.gpu_worker.engines.loader import load_causal_lm

        started = time.monotonic()
        try:
            self._tokenizer, self._model = load_causal_lm(self.spec, self._cache_dir, self.device)
        except Exception:
            self.state = ModelState.FAILED
            raise
        self._eos = _eos_ids(self._tokenizer, self._model)
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{self.spec.model_id}", daemon=True
        )
        self._thread.start()
        self.state = ModelState.READY
        log.info(
            "%s ready on %s in %.1fs", self.spec.model_id, self.device, time.monotonic() - started
        )

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- requests --------------------------------------------------------------------------
    def submit(self, request: GenerationInput, sink: Sink) -> _Sequence:
        sequence = _Sequence(request, sink)
        with self._wake:
            if self._closed:
                sink(Unavailable(f"model {self.spec.model_id} is shutting down"))
                return sequence
            self._incoming.append(sequence)
            self._wake.notify()
        return sequence

    def active_sequences(self) -> int:
        return len(self._running) + len(self._incoming)

    # -- the engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._wake:
                    while not (self._incoming or self._running or self._closed):
                        self._wake.wait()
                    if self._closed:
                        break
                    self._running.extend(self._incoming)
                    self._incoming.clear()
                for sequence in list(self._running):
                    if not self._advance(sequence):
                        self._running.remove(sequence)
        for sequence in self._running + self._incoming:
            sequence.sink(Unavailable(f"model {self.spec.model_id} stopped"))

    def _advance(self, seq: _Sequence) -> bool:
        """One step of one sequence. False when the sequence has left the engine."""
        if seq.cancelled.is_set():
            return False
        try:
            if seq.past is None and seq.input_ids is None:
                self._prepare(seq)
            token = self._step(seq)
        except InvalidArgument as exc:
            seq.sink(exc)
            return False
        except Exception as exc:  # a device or runtime fault: stop serving garbage
            log.exception("model step failed for %s", seq.request.request_id)
            self.healthy = False
            seq.sink(exc)
            return False
        return self._emit(seq, token)

    def _prepare(self, seq: _Sequence) -> None:
        from services.gpu_worker.engines.sampling import make_generator

        ids = self._encode(seq.request.prompt)
        limit = self.spec.max_context_tokens
        if len(ids) + seq.request.max_tokens > limit:
            raise InvalidArgument(
                f"prompt ({len(ids)} tokens) plus max_tokens ({seq.request.max_tokens}) "
                f"exceeds the context of {self.spec.model_id} ({limit} tokens)"
            )
        import torch

        seq.input_ids = torch.tensor([ids], device=self.device)
        seq.prompt_tokens = len(ids)
        seq.detok = IncrementalDetokenizer(self._tokenizer)
        seq.stops = StopMatcher(seq.request.sampling.stop)
        seq.generator = make_generator(seq.request.sampling, self.device)

    def _step(self, seq: _Sequence) -> int:
        import torch

        from services.gpu_worker.engines.sampling import next_token

        if seq.past is None:
            inputs = seq.input_ids
        else:
            inputs = torch.tensor([[seq.last_token]], device=self.device)
        out = self._model(input_ids=inputs, past_key_values=seq.past, use_cache=True)
        seq.past = out.past_key_values
        seq.input_ids = None
        return next_token(out.logits[0, -1], seq.request.sampling, seq.generator)

    def _emit(self, seq: _Sequence, token: int) -> bool:
        assert seq.detok is not None and seq.stops is not None
        if token in self._eos:
            seq.sink(TextDelta(seq.stops.flush() + seq.detok.flush(), 0))
            return self._finish(seq, FinishReason.STOP)
        seq.last_token = token
        seq.generated += 1
        text, stopped = seq.stops.push(seq.detok.push(token))
        if stopped:
            seq.sink(TextDelta(text, 1))
            return self._finish(seq, FinishReason.STOP)
        if seq.generated >= seq.request.max_tokens:
            tail, _ = seq.stops.push(seq.detok.flush())
            seq.sink(TextDelta(text + tail + seq.stops.flush(), 1))
            return self._finish(seq, FinishReason.LENGTH)
        seq.sink(TextDelta(text, 1))
        return True

    def _finish(self, seq: _Sequence, reason: FinishReason) -> bool:
        seq.sink(Finished(reason, seq.prompt_tokens, seq.generated))
        seq.past = None
        return False

    def _encode(self, prompt: str) -> list[int]:
        tok = self._tokenizer
        if self.spec.chat_template and tok.chat_template:
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(prompt)["input_ids"]


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
