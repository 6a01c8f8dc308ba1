"""Issue 26: fewer messages on a worker's session. A worker whose report did not change lets
heartbeats pass (the scheduler watches its session's transport meanwhile); what changes
reaches the scheduler at the next interval, and a scheduler that restarted hears the full
state once, at once. Leases that end together are reported in one message."""

import asyncio

from inference.v1 import scheduler_pb2, types_pb2

from services.gpu_worker import session as worker_session
from services.scheduler.config import with_overrides
from services.scheduler.core.types import WorkerState
from services.scheduler.server import SchedulerServer
from tests.service.test_scheduling import wait_until
from tests.stack import request, sim_model, start_stack

MODEL = sim_model("sim-quiet", slots=4)


def count_heartbeats(scheduler: SchedulerServer) -> list[str]:
    """The workers of the heartbeats `scheduler` hears from now on, one entry each."""
    heard: list[str] = []
    coordinator = scheduler.coordinator
    hear = coordinator.heartbeat

    def counted(session, *args, **kwargs):
        heard.append(session.worker_id)
        return hear(session, *args, **kwargs)

    coordinator.heartbeat = counted
    return heard


def state_of(scheduler: SchedulerServer, worker_id: str):
    [record] = [r for r in scheduler.coordinator.state.workers() if r.worker_id == worker_id]
    return record


async def test_an_idle_worker_stays_quiet_and_alive_and_a_change_goes_at_the_next_interval():
    # 100 ms intervals; quiet, a worker beats once in 21 (2.1 s), suspect after 3 s of silence
    stack = await start_stack([MODEL], workers=1, quiet_heartbeats=20, heartbeat_misses=10)
    try:
        [worker] = stack.workers
        await asyncio.sleep(0.5)  # its first heartbeats, while its model came up
        heard = count_heartbeats(stack.scheduler)
        await asyncio.sleep(2.0)  # 20 intervals, nothing changing
        assert len(heard) <= 3  # not one an interval
        record = state_of(stack.scheduler, worker.worker_id)
        assert not record.suspect  # silent longer than misses alone allow: quiet, not dead
        answer = await stack.router_stub().Infer(request("sim-quiet", max_tokens=4), timeout=5)
        assert answer.worker_id == worker.worker_id
        worker.host.draining = True  # what a decision reads goes at the next interval,
        await wait_until(lambda: record.state is WorkerState.DRAINING, timeout_s=1.0)  # < 2.1 s
    finally:
        await stack.close()


async def test_a_restarted_scheduler_hears_a_quiet_workers_full_state_at_once():
    # 50 quiet intervals: without the full heartbeat a session starts with, the new scheduler
    # would take the draining worker as ready for 5 s
    stack = await start_stack([MODEL], workers=2, quiet_heartbeats=50)
    try:
        drained, other = stack.workers
        drained.host.draining = True
        await wait_until(
            lambda: state_of(stack.scheduler, drained.worker_id).state is WorkerState.DRAINING
        )
        await asyncio.sleep(0.5)  # quiet since: its report has not changed
        old = stack.scheduler
        await old.stop(0)
        stack.scheduler = SchedulerServer(
            with_overrides(old.config, listen=stack.scheduler_address)
        )
        await stack.scheduler.start()
        await wait_until(lambda: len(stack.scheduler.coordinator.state.workers()) == 2)
        await wait_until(  # well before its quiet intervals would have passed
            lambda: state_of(stack.scheduler, drained.worker_id).state is WorkerState.DRAINING,
            timeout_s=2.0,
        )
        for n in range(4):
            answer = await stack.router_stub().Infer(
                request("sim-quiet", f"question {n}", max_tokens=2), timeout=5
            )
            assert answer.worker_id == other.worker_id
    finally:
        await stack.close()


async def test_leases_that_end_together_are_reported_in_one_message_and_each_ends_once(
    monkeypatch,
):
    sizes: list[int] = []
    pack = worker_session.lease_ends_message

    def counted(ended):
        sizes.append(len(ended))
        return pack(ended)

    monkeypatch.setattr(worker_session, "lease_ends_message", counted)
    stack = await start_stack([MODEL], workers=1)
    try:
        [worker] = stack.workers
        stub = stack.scheduler_stub()
        grants = [
            await stub.Acquire(
                scheduler_pb2.AcquireRequest(
                    request_id=f"r{n}", model_id="sim-quiet", prompt_tokens=4, max_tokens=4
                ),
                timeout=5,
            )
            for n in range(3)
        ]
        core = stack.scheduler.coordinator.state
        assert core.active_leases() == 3
        for grant in grants:  # as one engine step ending three sequences reports them
            ended = scheduler_pb2.LeaseEnded(
                lease_id=grant.lease_id, outcome=types_pb2.LEASE_OUTCOME_COMPLETED
            )
            worker.session.report(scheduler_pb2.WorkerSessionRequest(lease_ended=ended))
        await wait_until(lambda: core.active_leases() == 0)
        assert sizes == [3]
        answer = await stack.router_stub().Infer(request("sim-quiet", max_tokens=4), timeout=5)
        assert answer.worker_id == worker.worker_id
        await wait_until(lambda: len(sizes) == 2)  # its end is reported after its answer
        assert sizes[-1] == 1  # one alone goes alone
    finally:
        await stack.close()
