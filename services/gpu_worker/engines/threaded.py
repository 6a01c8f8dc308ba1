"""The lifecycle shared by engines that run a model on a thread of their own."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from services.common.catalog import ModelSpec
from services.gpu_worker.engines.base import ModelState
from services.gpu_worker.engines.prefix_cache import PrefixCache

log = logging.getLogger(__name__)


class ThreadedEngine:
    """Subclasses load their model in `load`, then call `_start`; their thread runs `_run`,
    waits on `_wake` and leaves when `_closed` is set."""

    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec = spec
        self.device = device
        self.state = ModelState.LOADING
        self.healthy = True
        self.weights_bytes = 0
        self.prefix_cache: PrefixCache | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def _start(self, model: Any, started: float) -> None:
        """Marks the model ready and starts the engine thread (call at the end of `load`)."""
        self.weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
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
            self._thread.join(timeout=10)

    def _run(self) -> None:
        raise NotImplementedError
