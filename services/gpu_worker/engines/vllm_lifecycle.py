"""What every engine on vLLM's v1 async engine (`AsyncLLM`) shares, whatever the model does:
starting vLLM, its health, its requests as tasks on the worker's loop, and shutting it down.

vLLM's engine core runs in a child process of the worker (`VLLM::EngineCore`, and on the
CPU its `VLLM::Worker`). Its client, `AsyncLLM`, is built in the loading thread and then runs
on the worker's own event loop, as vLLM's server runs it on its own: the worker's requests
and vLLM's output handler share one loop, with no thread between them.

- Each request is a task on that loop; cancelling its handle cancels the task, which aborts
  the request inside vLLM at once (client cancel, deadline, revoke, lease end).
- vLLM's engine core dying makes the engine unhealthy (the worker then serves NOT_SERVING,
  finishes and exits to be replaced); a request vLLM refuses fails alone, and a streak of
  those makes the engine unhealthy too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from services.common.catalog import ModelSpec
from services.common.errors import ServiceError, Unavailable
from services.common.windowed import SlidingWindow
from services.gpu_worker.engines.base import RATE_WINDOW_S, EngineStats, ModelState, Sink
from services.gpu_worker.engines.isolation import FaultStreak, is_out_of_memory, request_error
from services.gpu_worker.engines.prefix_cache import PrefixCache
from services.gpu_worker.engines.vllm_kv_events import KvEventMirror
from services.gpu_worker.engines.vllm_setup import EngineFigures, engine_args, stat_logger_factory

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0


class VllmSequence:
    """A request running in vLLM: cancelling it aborts the request in the engine."""

    def __init__(self, task: asyncio.Task | None = None) -> None:
        self._task = task

    def cancel(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        loop = task.get_loop()
        if _running_loop() is loop:
            task.cancel()  # vLLM aborts the request
        else:
            loop.call_soon_threadsafe(task.cancel)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class VllmLifecycle:
    """The part of an engine on vLLM that does not depend on what the model does. A subclass
    names vLLM's runner ("generate" or "pooling") and runs its requests with `_start`."""

    RUNNER = "generate"
    KEEPS_KV = True  # its requests hold KV cache a lease must budget (not an encoder's)

    def __init__(self, spec: ModelSpec, cache_dir: Path, device: str) -> None:
        self.spec = spec
        self.device = device
        self.state = ModelState.LOADING
        self._healthy = True
        self.prefix_cache: PrefixCache | None = None  # vLLM's, in our names (KV events)
        self._kv_events: KvEventMirror | None = None
        self._cache_dir = cache_dir
        self._llm: Any = None
        self._tokenizer: Any = None
        self._figures = EngineFigures()
        self._max_slots = spec.max_slots
        self._kv_capacity = 0
        self._weights_bytes = 0
        self._closed = False
        self._ids = itertools.count()
        self._streak = FaultStreak()
        self._produced = SlidingWindow(RATE_WINDOW_S)  # tokens (generative) or texts
        self._running: dict[int, tuple[asyncio.Task, Sink]] = {}  # requests in vLLM

    def load(self) -> None:
        """Starts vLLM (its engine core process loads the weights and sizes the KV cache).
        Blocking: the worker calls it in a thread, with no event loop running there, so
        vLLM's output handler starts on the loop of the first request (the worker's)."""
        from vllm.v1.engine.async_llm import AsyncLLM

        from services.gpu_worker.engines.loader import model_folder

        started = time.monotonic()
        try:
            folder = model_folder(self.spec, self._cache_dir)
            self._weights_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
            if self.KEEPS_KV and self.spec.vllm.enable_prefix_caching is not False:
                self._kv_events = KvEventMirror()
            endpoint = self._kv_events.endpoint if self._kv_events else ""
            args = engine_args(self.spec, folder, self.device, self.RUNNER, endpoint)
            self._llm = AsyncLLM.from_engine_args(
                args, stat_loggers=[stat_logger_factory(self._figures)]
            )
        except Exception:
            self.state = ModelState.FAILED
            if self._kv_events is not None:
                self._kv_events.stop()
            raise
        config = self._llm.vllm_config
        self._max_slots = config.scheduler_config.max_num_seqs
        blocks, block_size = config.cache_config.num_gpu_blocks, config.cache_config.block_size
        self._kv_capacity = (blocks or 0) * (block_size or 0)
        self._tokenizer = self._llm.get_tokenizer()
        if self._kv_events is not None:
            self._kv_events.start()
            self.prefix_cache = self._kv_events.cache
        self.state = ModelState.READY
        log.info(
            "%s ready on vLLM (%s, %s) in %.1fs: %d slots, %d KV tokens",
            self.spec.model_id,
            self.RUNNER,
            self.device,
            time.monotonic() - started,
            self._max_slots,
            self._kv_capacity,
        )

    @property
    def healthy(self) -> bool:
        """False once vLLM's engine core died (killed, crashed, out of memory), or after a
        streak of failed requests. Read by the worker's health watch."""
        if self._healthy and self._llm is not None and self._llm.errored and not self._closed:
            log.error("vLLM's engine core for %s died; it is unhealthy", self.spec.model_id)
            self._healthy = False
        return self._healthy

    def close(self) -> None:
        """Running requests get an error event; then vLLM's processes stop."""
        if self._closed:
            return
        self._closed = True
        if self._kv_events is not None:
            self._kv_events.stop()
        for number, (task, sink) in list(self._running.items()):
            self._running.pop(number, None)
            sink(Unavailable(f"model {self.spec.model_id} stopped"))
            VllmSequence(task).cancel()
        llm, self._llm = self._llm, None  # vLLM shuts down again when collected
        if llm is not None:
            llm.shutdown(SHUTDOWN_TIMEOUT_S)

    def active_sequences(self) -> int:
        return len(self._running)

    def stats(self) -> EngineStats:
        figures, busy = self._figures, bool(self._running)
        kv_capacity = self._kv_capacity if self.KEEPS_KV else 0
        return EngineStats(
            running=len(self._running),
            # vLLM reports when it steps: once idle, what it last said is stale
            kv_tokens_used=int(figures.kv_usage * kv_capacity) if busy else 0,
            kv_tokens_capacity=kv_capacity,
            tokens_per_second=self._produced.per_second(),  # tokens, or texts embedded
            memory_bytes=self._weights_bytes,
            max_slots=self._max_slots,
            engine_running=figures.running if busy else 0,
            engine_waiting=figures.waiting if busy else 0,
            prefix_cache_queries=figures.prefix_queries,
            prefix_cache_hits=figures.prefix_hits,
        )

    def _start(
        self, work: Callable[[int], Coroutine[Any, Any, object]], sink: Sink
    ) -> VllmSequence:
        """Runs `work(number)` (number: unique in this engine) as a task on the running loop;
        its result, or the error it raised, goes to `sink` once. Must be called on the
        worker's event loop (vLLM's client runs on it)."""
        if self._closed or not self.healthy:
            sink(Unavailable(f"model {self.spec.model_id} is not serving"))
            return VllmSequence()
        number = next(self._ids)
        task = asyncio.get_running_loop().create_task(self._run(work, sink, number))
        self._running[number] = (task, sink)
        return VllmSequence(task)

    async def _run(
        self, work: Callable[[int], Coroutine[Any, Any, object]], sink: Sink, number: int
    ) -> None:
        try:
            event = await work(number)
            self._streak.succeeded()
        except asyncio.CancelledError:
            self._running.pop(number, None)
            raise  # the worker cancelled it: vLLM has aborted it, nobody listens
        except ServiceError as exc:
            event = exc
        except Exception as exc:  # noqa: BLE001 - classified below
            event = self._classify(exc)
        if self._running.pop(number, None) is not None:  # else close() ended it already
            sink(event)

    def _classify(self, exc: Exception) -> BaseException:
        """A dead engine core is the engine's fault; anything else vLLM raised for one
        request fails it alone, and a streak of those says the engine is at fault."""
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(exc, EngineDeadError) or self._llm is None or self._llm.errored:
            self._healthy = False
            error = Unavailable(f"model {self.spec.model_id} failed on this worker")
            error.__cause__ = exc
            return error
        log.warning("vLLM failed a request of %s: %r", self.spec.model_id, exc)
        if not is_out_of_memory(exc) and self._streak.failed():
            log.error(
                "%s failed %d requests in a row; unhealthy", self.spec.model_id, self._streak.limit
            )
            self._healthy = False
        return request_error(self.spec.model_id, exc)
