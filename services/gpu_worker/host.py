"""The models a worker holds: their engines, loading and unloading, health and draining.

Models load in a thread (the event loop keeps serving) and are reported as loading until
ready. An unloaded model leaves the heartbeats at once (no new leases) and is closed when
its last sequence ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from services.common.catalog import ModelSpec
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.gpu_worker.engines import create_engine
from services.gpu_worker.engines.base import (
    EmbeddingEngine,
    Engine,
    GenerativeEngine,
    ModelState,
)

log = logging.getLogger(__name__)


class ModelHost:
    def __init__(
        self,
        catalog: dict[str, ModelSpec],
        initial: list[str],
        cache_dir: Path,
        device: str,
        device_name: str = "",
        on_loaded: Callable[[str, float], None] | None = None,
    ) -> None:
        self._on_loaded = on_loaded
        self.catalog = catalog
        self.device = device
        self.device_name = device_name
        self._cache_dir = cache_dir
        self.engines: dict[str, GenerativeEngine | EmbeddingEngine] = {
            m: self._create(catalog[m]) for m in initial
        }
        self._retiring: set[asyncio.Task] = set()
        self.draining = False

    async def load_all(self) -> None:
        """Loads every model not loaded yet, one at a time."""
        for model_id, engine in list(self.engines.items()):
            if engine.state is ModelState.LOADING:
                await self._load(model_id, engine)

    async def load(self, model_id: str) -> None:
        """Adds a model from the catalog (scheduler command). Raises NotFound."""
        if model_id in self.engines:
            return
        spec = self.catalog.get(model_id)
        if spec is None:
            raise NotFound(f"model {model_id!r} is not in this worker's catalog")
        engine = self._create(spec)
        self.engines[model_id] = engine
        await self._load(model_id, engine)

    def unload(self, model_id: str) -> None:
        """Stops leasing a model now; closes it once its sequences have finished."""
        engine = self.engines.pop(model_id, None)
        if engine is None:
            return
        task = asyncio.create_task(self._retire(model_id, engine))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def generative(self, model_id: str) -> GenerativeEngine:
        """The ready engine of a generative model. Raises InvalidArgument (an embedding
        model) or Unavailable (not here, not ready, unhealthy: another worker may serve)."""
        return cast(GenerativeEngine, self._ready(model_id, "generative"))

    def embedding(self, model_id: str) -> EmbeddingEngine:
        """The ready engine of an embedding model. Raises InvalidArgument (a generative
        model) or Unavailable (not here, not ready, unhealthy: another worker may serve)."""
        return cast(EmbeddingEngine, self._ready(model_id, "embedding"))

    def _ready(self, model_id: str, kind: str) -> GenerativeEngine | EmbeddingEngine:
        """A draining worker still runs what the scheduler leased before it heard of the
        drain; the scheduler grants no new leases to a draining worker."""
        engine = self.engines.get(model_id)
        if engine is None:  # unloaded since the scheduler granted it: the request moves on
            raise Unavailable(f"model {model_id!r} is not on this worker (any more)")
        if engine.spec.kind != kind:
            raise InvalidArgument(f"model {model_id!r} is a {engine.spec.kind} model")
        if not engine.healthy:
            raise Unavailable(f"model {model_id!r} is unhealthy on this worker")
        if engine.state is not ModelState.READY:
            raise Unavailable(f"model {model_id!r} is {engine.state.value} on this worker")
        return engine

    @property
    def healthy(self) -> bool:
        return all(engine.healthy for engine in self.engines.values())

    def active_sequences(self) -> int:
        return sum(engine.active_sequences() for engine in self.engines.values())

    async def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no sequence runs; False if `timeout_s` passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.active_sequences() and loop.time() < deadline:  # noqa: ASYNC110 - engines run on threads
            await asyncio.sleep(0.05)
        return self.active_sequences() == 0

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()

    def _create(self, spec: ModelSpec) -> GenerativeEngine | EmbeddingEngine:
        return create_engine(spec, self._cache_dir, self.device, self.device_name)

    async def _load(self, model_id: str, engine: Engine) -> None:
        started = time.monotonic()
        try:
            await asyncio.to_thread(engine.load)
        except Exception:
            log.exception("loading %s failed", model_id)
            return
        if self._on_loaded is not None:
            self._on_loaded(model_id, time.monotonic() - started)

    async def _retire(self, model_id: str, engine: Engine) -> None:
        while engine.active_sequences():  # noqa: ASYNC110 - engines run on threads
            await asyncio.sleep(0.05)
        await asyncio.to_thread(engine.close)
        log.info("unloaded %s", model_id)
