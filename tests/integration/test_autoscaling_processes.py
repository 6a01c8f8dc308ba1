"""The local actuator follows the autoscaling policy: workers are added under a load step
and drained after it, and no request fails on the way up or down."""

import pytest

from bench.autoscale_scenario import load_step
from bench.sim_cluster import sim_cluster

pytestmark = pytest.mark.slow

SCHEDULER = """
[scheduler.autoscaling]
enabled = true
warmup_s = 2.0
target_utilization = 1.0
scale_up_cooldown_s = 3.0
scale_down_cooldown_s = 4.0
"""


async def test_workers_follow_a_load_step_up_and_back_down_without_failing_requests(tmp_path):
    cluster = sim_cluster(
        tmp_path,
        workers=0,
        slots=2,
        step_ms=40.0,
        scheduler=SCHEDULER,
        model="min_workers = 1\nmax_workers = 3",
        actuator=True,
    )
    cluster.start(ready_timeout_s=120)
    try:
        result = await load_step(cluster, clients=10, load_s=12.0, trickle=2, min_workers=1)
    finally:
        codes = cluster.stop()
    logs = cluster.logs()
    assert result.outcomes == {"OK": result.requests}, logs
    assert result.peak_workers == 3, [s.ready for s in result.samples]
    new_workers = set(result.served_by) - result.initial_workers
    assert len(new_workers) == 2, result.served_by  # both added workers served requests
    assert result.first_new_token_s is not None  # a new worker streamed during the step
    assert result.ended_at_s is not None, "the fleet went back to its minimum"
    up = [s.desired for s in result.samples]
    assert up.index(3) < len(up) - 1 and min(up[up.index(3) :]) == 1
    assert codes["actuator"] == 0, logs
    assert "exited after draining (code 0)" in (tmp_path / "actuator.log").read_text()
