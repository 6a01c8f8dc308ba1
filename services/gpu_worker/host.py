"""The models a worker holds: their engines, loading, health and draining."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services.common.catalog import ModelSpec
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.gpu_worker.engines import create_engine
from services.gpu_worker.engines.base import Engine, ModelState

log = logging.getLogger(__name__)


class ModelHost:
    def __init__(self, specs: list[ModelSpec], cache_dir: Path, device: str) -> None:
        self.device = device
        self.engines: dict[str, Engine] = {
            spec.model_id: create_engine(spec, cache_dir, device) for spec in specs
        }
        self.draining = False

    async def load_all(self) -> None:
        """Loads every model, one at a time, each in a thread (the loop keeps serving)."""
        for model_id, engine in self.engines.items():
            try:
                await asyncio.to_thread(engine.load)
            except Exception:
                log.exception("loading %s failed", model_id)

    def engine_for(self, model_id: str, kind: str = "generative") -> Engine:
        """The ready engine for a model of that kind. Raises NotFound, InvalidArgument (wrong
        kind) or Unavailable."""
        if self.draining:
            raise Unavailable("worker is draining")
        engine = self.engines.get(model_id)
        if engine is None:
            raise NotFound(f"model {model_id!r} is not on this worker")
        if engine.spec.kind != kind:
            raise InvalidArgument(f"model {model_id!r} is a {engine.spec.kind} model")
        if engine.state is not ModelState.READY or not engine.healthy:
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
