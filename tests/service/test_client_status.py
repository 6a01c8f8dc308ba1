"""The command-line client's readable status table."""

import asyncio
import re

from client.__main__ import main
from tests.service.test_scheduling import wait_until
from tests.stack import request


async def test_status_table_shows_queue_workers_and_models(stack, capsys):
    await stack.router_stub().Infer(request(max_tokens=4))
    await wait_until(lambda: stack.scheduler.coordinator.state.decisions)  # a sweep has run
    code = await asyncio.to_thread(main, ["--address", stack.router_address, "status"])
    out = capsys.readouterr().out
    assert code == 0
    assert "queue: high 0  medium 0  low 0" in out
    worker = stack.workers[0].worker_id
    assert worker in out and "cpu-0" in out and "ready" in out
    assert "sim-fast" in out
    # the autoscaling view: 1 worker, 1 desired, bounds 1-1, then utilization, rate, reason
    assert re.search(r"sim-fast\s+1\s+1\s+1-1\s+\d+%\s+[\d.]+\s+[a-z_]+\n", out), out
