"""GPU path of the local actuator: one worker per GPU NVML sees. Skipped without a GPU."""

import pytest

from services.actuator.devices import devices_from, visible_gpu_count
from services.actuator.plan import Start, reconcile

pytestmark = pytest.mark.gpu

if visible_gpu_count() == 0:
    pytest.skip("no NVIDIA GPU on this machine", allow_module_level=True)


def test_the_actuator_pins_one_worker_to_each_gpu_nvml_sees():
    gpus = visible_gpu_count()
    devices = devices_from("auto", cpu_slots=0)
    assert devices.gpus == tuple(range(gpus))
    actions = reconcile({"m": gpus + 1}, [], devices)
    assert actions == [Start("m", f"gpu-{i}") for i in range(gpus)]  # none left for a spare
