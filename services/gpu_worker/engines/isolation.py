"""Keeping a fault inside the smallest unit that had it: a sequence, then a step, then the
engine.

When a batched model step raises, the engine cannot tell from the exception which row caused
it. Unless the fault is the device's own (a CUDA error poisons the whole context: the engine
is unhealthy and its worker is replaced), each sequence of the failed step is run again alone,
from its prompt and the tokens it already generated (`rebuild`): the ones that fail alone are
the culprits and end with INVALID_ARGUMENT, not to be retried elsewhere; the others continue
in a new batch, with nothing lost. A fault that every sequence has, or one that keeps hitting
request after request (`FaultStreak`), is the engine's. Running out of device memory is
neither: the sequence that still cannot run alone moves to another worker (UNAVAILABLE), and
the engine stays healthy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from services.common.errors import InvalidArgument, ServiceError, Unavailable

log = logging.getLogger(__name__)

DEVICE_FAULT_MARKERS = ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cuDNN error", "NCCL")
STREAK_LIMIT = 3  # consecutive requests failing alone, none succeeding between: the engine's


def is_device_fault(exc: BaseException) -> bool:
    """A fault of the device or its runtime, after which no result on it can be trusted."""
    import torch

    if isinstance(exc, torch.AcceleratorError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in DEVICE_FAULT_MARKERS)


def is_out_of_memory(exc: BaseException) -> bool:
    """The device ran out of memory: the worker's condition at that moment (its batch, its
    other models), not the request's fault, and no poison for the device either."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def request_error(model_id: str, exc: BaseException) -> ServiceError:
    """What a request that fails alone gets (the details go to the log): INVALID_ARGUMENT,
    not retried, when its input makes the model fail; UNAVAILABLE when the device ran out of
    memory, so that the router moves it to another worker."""
    if is_out_of_memory(exc):
        return Unavailable(f"{model_id} ran out of device memory on this worker; moving on")
    return InvalidArgument(
        f"{model_id} failed on this request ({type(exc).__name__}); it is not retried"
    )


class FaultStreak:
    """Counts requests failing alone in a row; too many means the engine is at fault."""

    def __init__(self, limit: int = STREAK_LIMIT) -> None:
        self.limit = limit
        self._count = 0

    def failed(self) -> bool:
        """Counts one; True when the streak reached the limit."""
        self._count += 1
        return self._count >= self.limit

    def succeeded(self) -> None:
        self._count = 0


def rebuild(
    prefill_alone: Callable[[Any], Any],
    sequences: list[Any],
    merge: Callable[[Any, Any], Any],
    fail: Callable[[Any, BaseException], None],
) -> tuple[list[Any], Any]:
    """Runs each sequence alone (`prefill_alone(seq)` → its one-row batch); those that raise
    go to `fail`. Returns the survivors and their merged batch (None if none survived).
    Raises a device fault at once, and the first fault when every one of several sequences
    failed alone (then it is not theirs but the engine's, and none was blamed)."""
    survivors: list[Any] = []
    faults: list[tuple[Any, BaseException]] = []
    batch = None
    for seq in sequences:
        try:
            alone = prefill_alone(seq)
        except Exception as exc:
            if is_device_fault(exc):
                raise
            faults.append((seq, exc))
            continue
        survivors.append(seq)
        batch = alone if batch is None else merge(batch, alone)
    if faults and not survivors and len(sequences) > 1:
        raise faults[0][1]
    for seq, exc in faults:
        log.warning("a request failed the model alone: %r", exc)
        fail(seq, exc)
    return survivors, batch
