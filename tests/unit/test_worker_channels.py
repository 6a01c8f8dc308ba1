"""Channels to workers that left are closed once idle past the longest call (review finding
11): a router under autoscaling churn keeps no connection to every address it ever served."""

import asyncio

from services.common.worker_channels import WorkerChannels
from tests.factories import Clock


def test_a_channel_idle_past_the_bound_is_closed_and_a_busy_one_kept():
    async def run() -> None:
        clock = Clock(0.0)
        channels = WorkerChannels(idle_close_s=100.0, clock=clock)
        channels.stub("10.0.0.1:50061")  # a worker that later leaves
        for _ in range(4):
            clock.now += 40.0
            channels.stub("10.0.0.2:50061")  # one still serving
        assert channels.addresses() == ["10.0.0.2:50061"]
        again = channels.stub("10.0.0.1:50061")  # an address back in use gets a new one
        assert again is not None and len(channels.addresses()) == 2
        await asyncio.sleep(0)  # the closing tasks run
        await channels.close()
        assert channels.addresses() == []

    asyncio.run(run())
