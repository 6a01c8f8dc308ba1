"""Sentence embeddings (e.g. all-MiniLM-L6-v2) through transformers, batched on a thread.

Requests that arrive while a batch runs are gathered into the next one (up to
`max_batch_inputs` texts), run as one padded forward pass, mean-pooled over real tokens and
L2-normalized — the published recipe for sentence-transformers models.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from services.common.catalog import ModelSpec
from services.common.errors import Unavailable
from services.common.windowed import SlidingWindow
from services.gpu_worker.engines.admission import admit_in_order, input_error
from services.gpu_worker.engines.base import (
    RATE_WINDOW_S,
    Embeddings,
    EngineStats,
    ModelState,
    Sink,
)
from services.gpu_worker.engines.isolation import is_device_fault, request_error
from services.gpu_worker.engines.threaded import ThreadedEngine

log = logging.getLogger(__name__)

MAX_BATCH_INPUTS = 64


@dataclass
class _EmbedRequest:
    texts: list[str]
    sink: Sink
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class SentenceEmbeddingEngine(ThreadedEngine):
    """An `EmbeddingEngine` (engines.base)."""

    def __init__(self, spec: ModelSpec, device: str) -> None:
        super().__init__(spec, device)
        self._tokenizer: Any = None
        self._model: Any = None
        self._queue: deque[_EmbedRequest] = deque()
        self._computing = 0  # requests in the batch being computed (out of the queue)
        self._done = SlidingWindow(RATE_WINDOW_S)  # texts embedded

    def load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from services.common.prompt_encoding import resolve_source

        started = time.monotonic()
        try:
            path = resolve_source(self.spec.source)
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            self._model = AutoModel.from_pretrained(path, dtype=getattr(torch, self.spec.dtype))
            self._model.to(self.device).eval()
        except Exception:
            self.state = ModelState.FAILED
            raise
        self._start(self._model, started)

    def embed(self, texts: list[str], sink: Sink) -> _EmbedRequest:
        """Queues texts; the sink gets one `Embeddings` event or an error."""
        request = _EmbedRequest(list(texts), sink)
        with self._wake:
            if self._closed:
                sink(Unavailable(f"model {self.spec.model_id} is shutting down"))
                return request
            self._queue.append(request)
            self._wake.notify()
        return request

    def active_sequences(self) -> int:
        """Requests waiting or being computed (drain waits for both)."""
        return len(self._queue) + self._computing

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self.active_sequences(),
            kv_tokens_used=0,
            kv_tokens_capacity=0,
            tokens_per_second=self._done.per_second(),  # texts embedded per second
            memory_bytes=self.weights_bytes,
            max_slots=self.spec.max_slots,
        )

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:
            log.exception("the engine thread of %s died; it is unhealthy", self.spec.model_id)
            self.healthy = False
        for request in self._queue:
            request.sink(Unavailable(f"model {self.spec.model_id} stopped"))

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not (self._queue or self._closed):
                    self._wake.wait()
                if self._closed:
                    break
                batch = self._take_batch()
            if batch:
                self._computing = len(batch)
                try:
                    self._embed_batch(batch)
                finally:
                    self._computing = 0

    def _take_batch(self) -> list[_EmbedRequest]:
        return admit_in_order(
            self._queue,
            MAX_BATCH_INPUTS,
            0,
            size=lambda r: len(r.texts),
            cancelled=lambda r: r.cancelled.is_set(),
        )

    def _embed_batch(self, batch: list[_EmbedRequest]) -> None:
        limit = self.spec.max_context_tokens
        accepted: list[tuple[_EmbedRequest, int]] = []
        for request in batch:
            if not request.texts:  # nothing to embed (the router refuses it; others may not)
                request.sink(Embeddings([], 0))
                continue
            try:
                lengths = [len(ids) for ids in self._tokenizer(request.texts)["input_ids"]]
            except Exception as exc:  # noqa: BLE001 - this request's input, alone
                request.sink(request_error(self.spec.model_id, exc))
                continue
            error = input_error(self.spec.model_id, max(lengths), limit)
            if error is not None:
                request.sink(error)
            else:
                accepted.append((request, sum(lengths)))
        if not accepted:
            return
        texts = [t for request, _ in accepted for t in request.texts]
        try:
            vectors = self._forward(texts)
        except Exception as exc:  # noqa: BLE001 - whose fault it is is found below
            self._isolate(exc, accepted)
            return
        self._done.add(len(texts))
        start = 0
        for request, tokens in accepted:
            end = start + len(request.texts)
            request.sink(Embeddings(vectors[start:end], tokens))
            start = end

    def _isolate(self, exc: Exception, accepted: list[tuple[_EmbedRequest, int]]) -> None:
        """A batch that failed: each request runs alone (engines.isolation); those that fail
        alone end with INVALID_ARGUMENT. A device fault, or one every request has, makes the
        engine unhealthy."""
        from services.gpu_worker.engines.isolation import rebuild

        def alone(item: tuple[_EmbedRequest, int]) -> list[tuple[_EmbedRequest, int, list]]:
            request, tokens = item
            return [(request, tokens, self._forward(request.texts))]

        def fail(item: tuple[_EmbedRequest, int], error: BaseException) -> None:
            item[0].sink(request_error(self.spec.model_id, error))

        try:
            if is_device_fault(exc):
                raise exc
            _, results = rebuild(alone, accepted, lambda a, b: a + b, fail)
        except Exception:
            log.exception("embedding batch failed; %s is now unhealthy", self.spec.model_id)
            self.healthy = False
            for request, _ in accepted:
                request.sink(Unavailable(f"model {self.spec.model_id} failed on this worker"))
            return
        for request, tokens, vectors in results or []:
            request.sink(Embeddings(vectors, tokens))

    def _forward(self, texts: list[str]) -> list[list[float]]:
        """Mean pooling over real tokens, then L2 normalization."""
        import torch

        encoded = self._tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self._model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().tolist()
