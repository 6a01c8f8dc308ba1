"""A generative model run by vLLM's v1 async engine (`AsyncLLM`), behind our engine interface.

vLLM's engine core runs in a child process of the worker (`VLLM::EngineCore`, and on the
CPU its `VLLM::Worker`); this side keeps an asyncio loop on a thread of its own, which owns
the `AsyncLLM` client, so the worker's gRPC loop never runs vLLM's output handling.

- Prompts are tokenized here exactly as the transformers engine does (`text.encode_request`:
  the chat template, then any text the request streamed elsewhere), and handed to vLLM as
  token ids, so greedy text is the same on both engines and a stream moves between them.
- Deltas come as vLLM makes them (`RequestOutputKind.DELTA`); the request's class goes to
  vLLM's priority scheduling (0 high, 1 medium, 2 low).
- A cancelled handle cancels the task that iterates vLLM's stream, which aborts the request
  inside vLLM at once (client cancel, deadline, revoke, lease end).
- Capacity is vLLM's: slots from its `max_num_seqs`, the KV budget from its KV cache (blocks
  × block size); a stat logger hands over its running and waiting counts, KV use and prefix
  cache figures at every step.
- vLLM's engine core dying makes the engine unhealthy (the worker then serves NOT_SERVING,
  finishes and exits to be replaced); a request vLLM refuses fails alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from services.common.catalog import ModelSpec
from services.common.errors import ServiceError, Unavailable
from services.common.windowed import SlidingWindow
from services.gpu_worker.engines.admission import context_error
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
from services.gpu_worker.engines.isolation import FaultStreak, request_error
from services.gpu_worker.engines.vllm_setup import (
    EngineFigures,
    engine_args,
    sampling_params,
    stat_logger_factory,
)

log = logging.getLogger(__name__)

HEALTH_POLL_S = 0.5  # how often the engine core's liveness is looked at
SHUTDOWN_TIMEOUT_S = 10.0


class VllmSequence:
    """A request running in vLLM: cancelling it aborts the request in the engine."""

    def __init__(self, future: Future | None = None) -> None:
        self._future = future

    def cancel(self) -> None:
        if self._future is not None:
            self._future.cancel()  # cancels the task on the engine's loop: vLLM aborts it


class VllmEngine:
    def __init__(self, spec: ModelSpec, cache_dir: Path, device: str) -> None:
        self.spec = spec
        self.device = device
        self.state = ModelState.LOADING
        self.healthy = True
        self._cache_dir = cache_dir
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._llm: Any = None
        self._tokenizer: Any = None
        self._figures = EngineFigures()
        self._max_slots = spec.max_slots
        self._kv_capacity = 0
        self._weights_bytes = 0
        self._active = 0
        self._lock = threading.Lock()
        self._closed = False
        self._ids = itertools.count()
        self._streak = FaultStreak()
        self._produced = SlidingWindow(RATE_WINDOW_S)
        self._sinks: dict[int, Sink] = {}  # running requests (engine loop only)

    # -- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Starts vLLM (its engine core process loads the weights and sizes the KV cache).
        Blocking: the worker calls it in a thread."""
        from services.gpu_worker.engines.loader import model_folder

        started = time.monotonic()
        try:
            folder = model_folder(self.spec, self._cache_dir)
            self._weights_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
            self._thread = threading.Thread(
                target=self._loop.run_forever, name=f"vllm-{self.spec.model_id}", daemon=True
            )
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self._start(folder), self._loop).result()
        except Exception:
            self.state = ModelState.FAILED
            raise
        self.state = ModelState.READY
        log.info(
            "%s ready on vLLM (%s) in %.1fs: %d slots, %d KV tokens",
            self.spec.model_id,
            self.device,
            time.monotonic() - started,
            self._max_slots,
            self._kv_capacity,
        )

    async def _start(self, folder: Path) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        args = engine_args(self.spec, folder, self.device)
        self._llm = AsyncLLM.from_engine_args(
            args, stat_loggers=[stat_logger_factory(self._figures)]
        )
        config = self._llm.vllm_config
        self._max_slots = config.scheduler_config.max_num_seqs
        self._kv_capacity = (config.cache_config.num_gpu_blocks or 0) * (
            config.cache_config.block_size or 0
        )
        self._tokenizer = self._llm.get_tokenizer()
        asyncio.get_running_loop().create_task(self._watch_health())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is None:
            return
        try:
            stop = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
            stop.result(timeout=SHUTDOWN_TIMEOUT_S + 5)
        except Exception:
            log.exception("stopping vLLM for %s failed", self.spec.model_id)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _stop(self) -> None:
        """Running requests get an error event; then vLLM's processes stop."""
        for sink in list(self._sinks.values()):
            sink(Unavailable(f"model {self.spec.model_id} stopped"))
        self._sinks.clear()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        llm, self._llm = self._llm, None  # vLLM shuts down again when collected
        if llm is not None:
            await asyncio.to_thread(llm.shutdown, SHUTDOWN_TIMEOUT_S)

    async def _watch_health(self) -> None:
        """vLLM's engine core dying (killed, crashed, out of memory) is the engine's fault:
        unhealthy from then on. Running requests get vLLM's EngineDeadError too."""
        llm = self._llm
        while not llm.errored:  # noqa: ASYNC110 - vLLM offers no event for it
            await asyncio.sleep(HEALTH_POLL_S)
        if not self._closed:
            log.error("vLLM's engine core for %s died; it is unhealthy", self.spec.model_id)
            self.healthy = False

    # -- requests and figures --------------------------------------------------------------
    def submit(self, request: GenerationInput, sink: Sink) -> VllmSequence:
        with self._lock:
            if self._closed or not self.healthy:
                sink(Unavailable(f"model {self.spec.model_id} is not serving"))
                return VllmSequence()
            self._active += 1
        run = self._run(request, sink, next(self._ids))
        return VllmSequence(asyncio.run_coroutine_threadsafe(run, self._loop))

    def active_sequences(self) -> int:
        return self._active

    def stats(self) -> EngineStats:
        figures, busy = self._figures, self._active > 0
        return EngineStats(
            running=self._active,
            # vLLM reports when it steps: once idle, what it last said is stale
            kv_tokens_used=int(figures.kv_usage * self._kv_capacity) if busy else 0,
            kv_tokens_capacity=self._kv_capacity,
            tokens_per_second=self._produced.per_second(),
            memory_bytes=self._weights_bytes,
            max_slots=self._max_slots,
            engine_running=figures.running if busy else 0,
            engine_waiting=figures.waiting if busy else 0,
            prefix_cache_queries=figures.prefix_queries,
            prefix_cache_hits=figures.prefix_hits,
        )

    # -- the engine's loop -----------------------------------------------------------------
    async def _run(self, request: GenerationInput, sink: Sink, number: int) -> None:
        self._sinks[number] = sink
        try:
            event = await self._stream(request, sink, number)
        except asyncio.CancelledError:
            event = None  # the worker cancelled it: vLLM has aborted it, nobody listens
            raise
        except ServiceError as exc:
            event = exc
        except Exception as exc:  # noqa: BLE001 - classified below
            event = self._classify(exc)
        finally:
            self._sinks.pop(number, None)
            with self._lock:
                self._active -= 1
        sink(event)

    async def _stream(self, request: GenerationInput, sink: Sink, number: int) -> Finished:
        """Streams one request's deltas to its sink; returns its Finished event."""
        from vllm.inputs import TokensPrompt

        from services.gpu_worker.engines.text import encode_request

        ids = encode_request(
            self._tokenizer, request.prompt, request.resume_text, self.spec.chat_template
        )
        error = context_error(
            self.spec.model_id, len(ids), request.remaining_tokens, self.spec.max_context_tokens
        )
        if error is not None:
            raise error
        params = sampling_params(request)
        generated, prompt_tokens, reason = 0, len(ids), FinishReason.LENGTH
        stream = self._llm.generate(
            TokensPrompt(prompt_token_ids=ids),
            params,
            f"{request.request_id}#{number}",  # request ids are unique per tenant only
            priority=request.priority_rank,
        )
        async for output in stream:
            completion = output.outputs[0]
            tokens = len(completion.token_ids)
            if completion.finish_reason is not None:
                reason = _finish_reason(completion)
                tokens -= reason is FinishReason.STOP and not isinstance(
                    completion.stop_reason, str
                )  # the end-of-sequence token: not counted, as the other engines do
            if tokens or completion.text:
                sink(TextDelta(completion.text, tokens, 0 if generated else prompt_tokens))
                self._produced.add(tokens)
            generated += tokens
        self._streak.succeeded()
        return Finished(reason, prompt_tokens, generated)

    def _classify(self, exc: Exception) -> BaseException:
        """A dead engine core is the engine's fault; anything else vLLM raised for one
        request fails it alone, and a streak of those says the engine is at fault."""
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(exc, EngineDeadError) or self._llm is None or self._llm.errored:
            self.healthy = False
            error = Unavailable(f"model {self.spec.model_id} failed on this worker")
            error.__cause__ = exc
            return error
        log.warning("vLLM failed a request of %s: %r", self.spec.model_id, exc)
        if self._streak.failed():
            log.error(
                "%s failed %d requests in a row; unhealthy", self.spec.model_id, self._streak.limit
            )
            self.healthy = False
        return request_error(self.spec.model_id, exc)


def _finish_reason(completion: Any) -> FinishReason:
    return FinishReason.LENGTH if completion.finish_reason == "length" else FinishReason.STOP
