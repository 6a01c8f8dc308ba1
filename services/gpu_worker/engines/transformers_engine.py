"""A causal LM run with PyTorch through transformers, with continuous batching.

The engine thread owns the model and one running batch (`kv_batch.KvBatch`). Each
iteration: cancelled rows leave; waiting sequences join while slots and the KV-token budget
allow (prefilled together, then merged into the batch); every row samples its next token
from its own logits with its own options; finished rows leave; one forward pass decodes the
rest. So requests join at the next step and leave as they finish, and the event loop that
serves gRPC never waits on the model.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

from services.common.catalog import ModelSpec
from services.common.errors import Unavailable
from services.common.prefix_blocks import BLOCK_TOKENS, block_hashes
from services.common.windowed import SlidingWindow
from services.gpu_worker.engines.admission import admit_in_order, context_error
from services.gpu_worker.engines.base import (
    RATE_WINDOW_S,
    EngineStats,
    GenerationInput,
    ModelState,
    Sink,
)
from services.gpu_worker.engines.isolation import FaultStreak
from services.gpu_worker.engines.prefix_cache import PrefixCache
from services.gpu_worker.engines.sequence import Sequence
from services.gpu_worker.engines.threaded import ThreadedEngine

log = logging.getLogger(__name__)


class TransformersEngine(ThreadedEngine):
    def __init__(self, spec: ModelSpec, cache_dir: Path, device: str) -> None:
        super().__init__(spec, device)
        self._cache_dir = cache_dir
        self.prefix_cache = PrefixCache(spec.prefix_cache_tokens)  # prompt blocks seen
        self._tokenizer: Any = None
        self._model: Any = None
        self._eos: set[int] = set()
        self._incoming: list[Sequence] = []
        # engine thread only: the running batch, its rows, the sequences waiting to join
        self._rows: list[Sequence] = []
        self._joining: list[Sequence] = []  # admitted, being prefilled
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._batch: Any = None
        self._streak = FaultStreak()
        self._active = 0  # sequences submitted and not finished (read from other threads)
        self._kv_tokens = 0
        self._produced = SlidingWindow(RATE_WINDOW_S)  # tokens

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
        self._start(self._model, started)

    def close(self) -> None:
        super().close()
        self._model = None

    # -- requests and figures --------------------------------------------------------------
    def submit(self, request: GenerationInput, sink: Sink) -> Sequence:
        sequence = Sequence(request, sink)
        with self._wake:
            if self._closed:
                sink(Unavailable(f"model {self.spec.model_id} is shutting down"))
                return sequence
            self._incoming.append(sequence)
            self._active += 1
            self._wake.notify()
        return sequence

    def active_sequences(self) -> int:
        return self._active

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self._active,
            kv_tokens_used=self._kv_tokens,
            kv_tokens_capacity=self.spec.max_batch_tokens,
            tokens_per_second=self._produced.per_second(),
            memory_bytes=self.weights_bytes,
            max_slots=self.spec.max_slots,
            prefix_cache_queries=self.prefix_cache.queried_tokens,
            prefix_cache_hits=self.prefix_cache.hit_tokens,
        )

    # -- the engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        """The engine thread. Whatever it raises is caught here: the engine turns unhealthy
        (its worker stops taking leases and is replaced) and every sequence gets an error."""
        try:
            self._loop()
        except BaseException as exc:
            log.exception("the engine thread of %s died; it is unhealthy", self.spec.model_id)
            self._fail_all(exc)
        for sequence in [*self._rows, *self._waiting, *self._incoming]:
            sequence.sink(Unavailable(f"model {self.spec.model_id} stopped"))

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._incoming or self._rows or self._waiting or self._closed):
                    self._wake.wait()
                if self._closed:
                    return
                arrived, self._incoming = self._incoming, []
            self._waiting.extend(s for s in arrived if self._prepare(s))
            try:
                self._step()
            except Exception as exc:  # the device's fault, or every row's: nothing to trust
                log.exception("model step failed; %s is now unhealthy", self.spec.model_id)
                self._fail_all(exc)

    def _step(self) -> None:
        """One iteration: rows leave and join, every row samples, one forward pass decodes."""
        import torch

        from services.gpu_worker.engines import kv_batch

        self._drop_cancelled()
        joining = self._joining = self._admit()
        if joining:
            try:
                joining, fresh = self._prefill(joining)
            except Exception as exc:  # noqa: BLE001 - isolated below
                joining, fresh = self._isolate(exc, joining)
            if joining:
                self._batch = fresh if self._batch is None else kv_batch.merge(self._batch, fresh)
                self._rows += joining
            self._joining = []
        if not self._rows:
            return
        tokens = self._sample(self._rows, self._batch.last_logits)
        keep = [i for i, (s, t) in enumerate(zip(self._rows, tokens, strict=True)) if t >= 0]
        keep = [i for i in keep if self._accept(self._rows[i], tokens[i])]
        self._produced_tokens(len(self._rows))
        self._finished(len(self._rows) - len(keep))
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            tokens = [tokens[i] for i in keep]
            self._batch = kv_batch.select(self._batch, keep) if keep else None
        if self._rows:
            try:
                ids = torch.tensor(tokens, device=self.device)
                kv_batch.decode(self._model, self._batch, ids)
            except Exception as exc:  # noqa: BLE001 - isolated below
                self._rows, self._batch = self._isolate(exc, self._rows)
        self._kv_tokens = sum(s.cached_tokens for s in self._rows)

    def _isolate(self, exc: Exception, sequences: list[Sequence]) -> tuple[list[Sequence], Any]:
        """After a batched step raised (not a device fault: re-raised), runs each sequence
        alone from its prompt and what it generated (engines.isolation): the culprits fail,
        the others come back as one batch."""
        from services.gpu_worker.engines import kv_batch
        from services.gpu_worker.engines.isolation import is_device_fault, rebuild

        if is_device_fault(exc):
            raise exc
        log.warning("a batched step of %s failed (%r); isolating it", self.spec.model_id, exc)
        return rebuild(
            lambda s: kv_batch.prefill(self._model, [s.prompt_ids + s.output_ids], self.device),
            sequences,
            kv_batch.merge,
            self._fail_request,
        )

    def _accept(self, seq: Sequence, token: int) -> bool:
        """Feeds a sampled token to its sequence; a sequence that raises fails alone."""
        try:
            keep = seq.accept(token, self._eos)
        except Exception as exc:  # noqa: BLE001 - the sequence fails alone
            self._fail_request(seq, exc, counted=False)
            return False
        if not keep:
            self._streak.succeeded()
        return keep

    def _fail_request(self, seq: Sequence, exc: BaseException, counted: bool = True) -> None:
        """Ends one sequence whose input made the model fail; a streak of them (no request
        succeeding in between) says the fault is the engine's."""
        from services.gpu_worker.engines.isolation import is_out_of_memory, request_error

        if is_out_of_memory(exc):  # the worker's condition, not a streak of bad requests
            log.warning("%s ran out of device memory; a request moves on", self.spec.model_id)
            _free_device_cache(self.device)
        elif self._streak.failed():
            log.error(
                "%s failed %d requests in a row; unhealthy", self.spec.model_id, self._streak.limit
            )
            self.healthy = False
        if counted:
            self._finished(1)
        seq.sink(request_error(self.spec.model_id, exc))

    def _fail_all(self, exc: BaseException) -> None:
        self.healthy = False
        error = Unavailable(f"model {self.spec.model_id} failed on this worker")
        error.__cause__ = exc
        doomed = [*self._rows, *self._joining, *self._waiting]
        for sequence in doomed:
            sequence.sink(error)
        self._finished(len(doomed))
        self._rows, self._joining, self._batch = [], [], None
        self._waiting = collections.deque()

    def _prefill(self, joining: list[Sequence]) -> tuple[list[Sequence], Any]:
        """Prefills joining sequences, each from its longest cached prefix (prefix caching),
        then caches the full blocks of their prompts."""
        from services.gpu_worker.engines import kv_batch

        found = [self._lookup(s) for s in joining]
        prefix = kv_batch.gather(found)
        rest = [s.prompt_ids[s.cached_prompt_tokens :] for s in joining]
        fresh = kv_batch.prefill(self._model, rest, self.device, prefix)
        if self.prefix_cache.enabled:
            for row, (s, blocks) in enumerate(zip(joining, found, strict=True)):
                full = s.block_hashes[len(blocks) :]
                if full:
                    start, end = len(blocks) * BLOCK_TOKENS, len(s.block_hashes) * BLOCK_TOKENS
                    payloads = kv_batch.blocks_of(fresh, row, start, end, BLOCK_TOKENS)
                    self.prefix_cache.store(full, payloads)
        return joining, fresh

    def _lookup(self, seq: Sequence) -> list[Any]:
        """The cached blocks `seq` starts from; sets its cached prompt tokens."""
        if not self.prefix_cache.enabled:
            return []
        blocks = self.prefix_cache.lookup(seq.block_hashes, len(seq.prompt_ids))
        seq.cached_prompt_tokens = len(blocks) * BLOCK_TOKENS
        return blocks

    def _prepare(self, seq: Sequence) -> bool:
        """Tokenizes and checks the prompt. False (and an error to the sink) if it is bad."""
        from services.common.prompt_encoding import encode_request
        from services.gpu_worker.engines.sampling import make_generator
        from services.gpu_worker.engines.text import IncrementalDetokenizer, StopMatcher

        request = seq.request
        try:
            ids = encode_request(
                self._tokenizer, request.prompt, request.resume_text, self.spec.chat_template
            )
        except Exception as exc:  # noqa: BLE001 - the sequence fails alone
            self._fail_request(seq, exc)
            return False
        limit = self.spec.max_context_tokens
        error = context_error(self.spec.model_id, len(ids), request.remaining_tokens, limit)
        if error is not None:
            self._finished(1)
            seq.sink(error)
            return False
        seq.prompt_ids = ids
        if self.prefix_cache.enabled:
            seq.block_hashes = block_hashes(ids, limit=len(ids))
        seq.generated = request.resume_tokens
        seq.detok = IncrementalDetokenizer(self._tokenizer)
        seq.stops = StopMatcher(seq.request.sampling.stop)
        seq.generator = make_generator(seq.request.sampling, self.device)
        return True

    def _admit(self) -> list[Sequence]:
        """Waiting sequences that fit the free slots and the KV-token budget, in order. The
        prefix cache lives in the budget's free part: it shrinks to what the rows leave."""
        rows = self._rows
        budget = self.spec.max_batch_tokens - sum(s.kv_tokens for s in rows)
        admitted = admit_in_order(
            self._waiting, budget, len(rows), lambda s: s.kv_tokens, self.spec.max_slots
        )
        left = budget - sum(s.kv_tokens for s in admitted)
        self.prefix_cache.shrink_to(left // BLOCK_TOKENS)
        return admitted

    def _drop_cancelled(self) -> None:
        from services.gpu_worker.engines import kv_batch

        for seq in [s for s in self._waiting if s.cancelled.is_set()]:
            self._waiting.remove(seq)
            self._finished(1)
        rows = self._rows
        keep = [i for i, s in enumerate(rows) if not s.cancelled.is_set()]
        if len(keep) == len(rows):
            return
        self._finished(len(rows) - len(keep))
        self._rows = [rows[i] for i in keep]
        self._batch = kv_batch.select(self._batch, keep) if keep else None

    def _sample(self, rows: list[Sequence], logits: Any) -> list[int]:
        """Each row's next token; -1 for a row whose sampling raised (it failed alone)."""
        from services.gpu_worker.engines.sampling import next_token

        greedy = logits.argmax(-1).tolist()
        tokens = []
        for i, s in enumerate(rows):
            row, masked = logits[i], s.holds_eos() and bool(self._eos)
            if masked:  # ignore_eos, or min_tokens not reached yet
                row = row.clone()
                row[list(self._eos)] = float("-inf")
            if s.request.sampling.greedy:
                tokens.append(int(row.argmax()) if masked else greedy[i])
                continue
            try:
                tokens.append(next_token(row, s.request.sampling, s.generator))
            except Exception as exc:  # noqa: BLE001 - the sequence fails alone
                self._fail_request(s, exc, counted=False)
                tokens.append(-1)
        return tokens

    def _produced_tokens(self, count: int) -> None:
        self._produced.add(count)

    def _finished(self, count: int) -> None:
        if count:
            with self._wake:
                self._active -= count


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


def _free_device_cache(device: str) -> None:
    """Gives the allocator's cached blocks back after an out-of-memory error."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
