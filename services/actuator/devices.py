"""The GPUs the local actuator may pin workers to."""

from __future__ import annotations

import logging

from services.actuator.plan import Devices
from services.common.config import ConfigError

log = logging.getLogger(__name__)


def visible_gpu_count() -> int:
    """GPUs NVML sees; 0 where there is no NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver: a CPU machine
        return 0
    try:
        return pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()


def devices_from(
    gpus: str, cpu_slots: int, cpu_fallback: bool = False, cpu_per_model: int = 0
) -> Devices:
    """`gpus`: "auto" (every GPU NVML sees), "none", or indices such as "0,1"."""
    if gpus == "auto":
        indices = tuple(range(visible_gpu_count()))
    elif gpus in ("none", ""):
        indices = ()
    else:
        try:
            indices = tuple(int(i) for i in gpus.split(","))
        except ValueError:
            raise ConfigError(
                f"actuator.gpus: auto, none or indices like 0,1; got {gpus!r}"
            ) from None
    log.info("devices: %s, %d CPU slots", [f"gpu-{i}" for i in indices] or "no GPU", cpu_slots)
    return Devices(indices, cpu_slots, cpu_fallback, cpu_per_model)
