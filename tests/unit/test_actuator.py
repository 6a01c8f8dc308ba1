"""The local actuator's loop with real child processes (`sleep`) in place of workers and a
scheduler status it is fed: it starts, drains, restarts and holds as the status says."""

import asyncio
import time
from pathlib import Path

from inference.v1 import types_pb2

from services.actuator.actuator import Actuator
from services.actuator.config import ActuatorConfig
from services.actuator.plan import Devices
from services.actuator.processes import LaunchSpec, ManagedWorker
from services.common.catalog import ModelSpec


class FedStatus:
    """The StatusSource: whatever the test sets."""

    def __init__(self) -> None:
        self.response = types_pb2.GetStatusResponse()

    def want(self, **desired: int) -> None:
        self.response = types_pb2.GetStatusResponse(
            scaling=[
                types_pb2.ModelScaling(model_id=m, desired_workers=n) for m, n in desired.items()
            ]
        )

    async def status(self) -> types_pb2.GetStatusResponse:
        return self.response


class SleepLauncher:
    """Starts `sleep` processes: they exit on SIGTERM like a drained worker."""

    def __init__(self) -> None:
        self.started: list[LaunchSpec] = []

    async def start(self, spec: LaunchSpec) -> ManagedWorker:
        self.started.append(spec)
        process = await asyncio.create_subprocess_exec("sleep", "60")
        return ManagedWorker(spec, process, time.monotonic(), Path("/dev/null"))


def actuator(status: FedStatus, launcher: SleepLauncher, min_workers: int = 0) -> Actuator:
    spec = ModelSpec("m", "simulated", min_workers=min_workers, max_workers=4)
    config = ActuatorConfig(catalog={"m": spec}, restart_backoff_s=0.5, worker_base_port=0)
    return Actuator(config, Devices((), 4), status, launcher)


async def settle(act: Actuator) -> None:
    await act.step()
    await asyncio.sleep(0.2)  # let signalled processes exit
    await act.step()


async def test_starts_and_drains_worker_processes_to_follow_the_desired_count():
    status, launcher = FedStatus(), SleepLauncher()
    act = actuator(status, launcher)
    try:
        status.want(m=3)
        await settle(act)
        assert act.counts() == {"m": 3}
        assert [s.device for s in launcher.started] == ["cpu"] * 3
        status.want(m=1)
        await settle(act)
        assert act.counts() == {"m": 1}
        assert len(act.workers) == 1, "drained workers exited and were reaped"
        assert [kind for _, kind, _ in act.events].count("exit") == 2
    finally:
        await act.shutdown()
    assert all(w.exited for w in act.workers.values())


async def test_a_worker_that_dies_is_replaced_after_a_backoff():
    status, launcher = FedStatus(), SleepLauncher()
    act = actuator(status, launcher)
    try:
        status.want(m=1)
        await act.step()
        [worker] = act.workers.values()
        worker.process.kill()  # a crash, not a drain
        await worker.process.wait()
        await act.step()
        assert act.counts() == {}, "held back: no restart inside the backoff"
        await asyncio.sleep(0.6)
        await act.step()
        assert act.counts() == {"m": 1} and len(launcher.started) == 2
    finally:
        await act.shutdown()


async def test_until_the_scheduler_settles_a_count_workers_are_kept_and_min_started():
    status, launcher = FedStatus(), SleepLauncher()
    act = actuator(status, launcher, min_workers=1)
    try:
        await act.step()  # no count published yet (the scheduler warms up)
        assert act.counts() == {"m": 1}
        status.want(m=2)
        await act.step()
        status.want()  # the scheduler restarted: nothing published again
        await settle(act)
        assert act.counts() == {"m": 2}, "kept, not cut to the minimum"
    finally:
        await act.shutdown()


async def test_a_restarted_actuator_never_reuses_a_worker_id():
    """Its first run's workers may still be draining, or be dead but not yet declared so by
    the scheduler: a second run's workers get ids of their own (review finding 17)."""
    ids = []
    for _ in range(2):
        status, launcher = FedStatus(), SleepLauncher()
        act = actuator(status, launcher)
        try:
            status.want(m=2)
            await settle(act)
            ids += [spec.worker_id for spec in launcher.started]
        finally:
            await act.shutdown()
    assert len(ids) == 4 and len(set(ids)) == 4
