"""Device telemetry for heartbeats: NVML for the pinned GPU, honest CPU figures otherwise."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSample:
    gpu_id: str
    name: str
    is_cpu: bool
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_celsius: float = 0.0
    power_watts: float = 0.0


class DeviceProbe(Protocol):
    def sample(self) -> DeviceSample: ...


class NvmlProbe:
    """One NVIDIA GPU by its NVML index (NVML ignores CUDA_VISIBLE_DEVICES)."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._index = index
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        self._name = name.decode() if isinstance(name, bytes) else name

    def sample(self) -> DeviceSample:
        nvml, handle = self._nvml, self._handle
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
        try:
            temperature = float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        except nvml.NVMLError:
            temperature = 0.0
        try:
            power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts → watts
        except nvml.NVMLError:
            power = 0.0
        return DeviceSample(
            gpu_id=f"gpu-{self._index}",
            name=self._name,
            is_cpu=False,
            utilization_percent=float(utilization.gpu),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            temperature_celsius=temperature,
            power_watts=power,
        )


class CpuProbe:
    """The host CPU: utilization of this machine and its memory (no NVML here)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        psutil.cpu_percent(interval=None)  # primes the counter; the next call measures
        self._name = _cpu_name()

    def sample(self) -> DeviceSample:
        memory = self._psutil.virtual_memory()
        return DeviceSample(
            gpu_id="cpu-0",
            name=self._name,
            is_cpu=True,
            utilization_percent=float(self._psutil.cpu_percent(interval=None)),
            memory_used_bytes=int(memory.total - memory.available),
            memory_total_bytes=int(memory.total),
        )


def open_probe(gpu_index: int, device: str) -> DeviceProbe:
    """NVML for GPU `gpu_index` (or GPU 0 when unpinned on a CUDA device), else the CPU."""
    if device != "cpu":
        try:
            return NvmlProbe(max(gpu_index, 0))
        except Exception as exc:  # noqa: BLE001 - no driver, no GPU or no library
            if gpu_index >= 0:
                log.warning("NVML unavailable for GPU %d (%s); reporting the CPU", gpu_index, exc)
    return CpuProbe()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"
