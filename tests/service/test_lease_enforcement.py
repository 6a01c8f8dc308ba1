"""Leases are enforced where the work runs: a worker runs only work under a valid, unexpired
lease its scheduler signed for it and for that request, once; and every lease's end reaches
the scheduler, whoever ends it."""

import time

import grpc
import pytest
from inference.v1 import scheduler_pb2, types_pb2, worker_pb2, worker_pb2_grpc

from services.common import lease_token
from services.common.leased_run import generate_ticket
from tests.service.test_scheduling import wait_until
from tests.stack import request, sim_model, start_stack

SECRET = "lease-test-secret"
ONE_SLOT = sim_model("sim-one", slots=1, step_ms=5.0)
SIGNER: list[lease_token.LeaseSigner] = []  # the running scheduler's


@pytest.fixture
async def stack():
    running = await start_stack([ONE_SLOT], secret=SECRET, lease_start_timeout_s=0.5)
    SIGNER[:] = [running.scheduler.lease_signer]
    yield running
    await running.close()


def ticket(req: types_pb2.GenerateRequest) -> scheduler_pb2.AcquireRequest:
    return generate_ticket(req, "anonymous")


async def acquire(stack, req) -> scheduler_pb2.LeaseGrant:
    metadata = (("x-internal-secret", SECRET),)
    return await stack.scheduler_stub().Acquire(ticket(req), metadata=metadata, timeout=5)


async def execute(stack, execute_request) -> list[types_pb2.GenerateResponse]:
    address = f"127.0.0.1:{stack.workers[0].port}"
    async with grpc.aio.insecure_channel(address) as channel:
        call = worker_pb2_grpc.WorkerStub(channel).Execute(
            execute_request, metadata=(("x-internal-secret", SECRET),), timeout=5
        )
        return [message async for message in call]


def claims_of(grant: scheduler_pb2.LeaseGrant) -> types_pb2.LeaseClaims:
    claims = types_pb2.LeaseClaims()
    claims.ParseFromString(grant.token.claims)
    return claims


async def refused(stack, execute_request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await execute(stack, execute_request)
    return info.value


def resigned(claims: types_pb2.LeaseClaims, **changes) -> types_pb2.LeaseToken:
    """The claims changed and signed again with the scheduler's real key."""
    for name, value in changes.items():
        setattr(claims, name, value)
    return SIGNER[0].sign(claims)


async def test_a_granted_lease_runs_once_and_its_end_reaches_the_scheduler(stack):
    req = request("sim-one", max_tokens=4, request_id="r-1")
    grant = await acquire(stack, req)
    run = worker_pb2.ExecuteRequest(lease_id=grant.lease_id, request=req, lease=grant.token)
    messages = await execute(stack, run)
    assert messages[-1].summary.completion_tokens == 4
    core = stack.scheduler.coordinator.state
    await wait_until(lambda: core.active_leases() == 0)  # the worker reported the end
    registry = stack.scheduler.metrics.registry
    started = registry.get_sample_value(
        "inference_scheduler_lease_starts_total", {"how": "granted"}
    )
    ended = registry.get_sample_value(
        "inference_scheduler_lease_ends_total", {"outcome": "completed"}
    )
    assert started == ended == 1
    replay = await refused(stack, run)  # the same lease a second time
    assert replay.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "presented already" in replay.details()


async def test_work_without_a_valid_lease_is_refused(stack):
    req = request("sim-one", max_tokens=4, request_id="r-2")
    grant = await acquire(stack, req)
    claims = claims_of(grant)
    forged = lease_token.LeaseSigner.generate().sign(claims_of(grant))
    cases = {
        "no lease": None,
        "forged": forged,
        "another worker": resigned(claims_of(grant), worker_id="worker-elsewhere"),
        "another request": resigned(claims_of(grant), request_id="r-other"),
        "expired": resigned(claims_of(grant), start_by_unix_ms=int(time.time() * 1000) - 1),
    }
    for name, token in cases.items():
        run = worker_pb2.ExecuteRequest(lease_id=claims.lease_id, request=req, lease=token)
        error = await refused(stack, run)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, name
    engine = stack.workers[0].host.engines["sim-one"]
    assert engine.active_sequences() == 0  # nothing ran


async def test_a_lease_never_presented_expires_and_frees_its_slot(stack):
    grant = await acquire(stack, request("sim-one", max_tokens=4, request_id="r-3"))
    core = stack.scheduler.coordinator.state
    assert core.active_leases() == 1
    await wait_until(lambda: core.active_leases() == 0, timeout_s=5)  # 0.5 s + heartbeats
    late = worker_pb2.ExecuteRequest(
        lease_id=grant.lease_id,
        request=request("sim-one", max_tokens=4, request_id="r-3"),
        lease=grant.token,
    )
    assert (await refused(stack, late)).code() == grpc.StatusCode.PERMISSION_DENIED
    answer = await stack.router_stub().Infer(request("sim-one", max_tokens=2), timeout=5)
    assert answer.completion_tokens == 2  # the slot went to the next request


async def test_the_worker_caps_generation_at_the_leased_max_tokens(stack):
    req = request("sim-one", max_tokens=3, request_id="r-4")
    grant = await acquire(stack, req)
    greedy = types_pb2.GenerateRequest()
    greedy.CopyFrom(req)
    greedy.max_tokens = 50  # more than the lease grants
    run = worker_pb2.ExecuteRequest(lease_id=grant.lease_id, request=greedy, lease=grant.token)
    messages = await execute(stack, run)
    assert messages[-1].summary.completion_tokens == 3


async def test_a_router_of_the_previous_release_still_streams_through_schedule(stack):
    scheduler = stack.scheduler_stub()
    call = scheduler.Schedule(
        scheduler_pb2.ScheduleRequest(
            request=request("sim-one", max_tokens=5, request_id="old-router"),
            tenant_id="anonymous",
        ),
        metadata=(("x-internal-secret", SECRET),),
        timeout=5,
    )
    messages = [message async for message in call]
    assert messages[-1].summary.completion_tokens == 5
    assert sum(m.delta.token_count for m in messages if m.HasField("delta")) == 5


async def test_a_client_cancelling_mid_stream_ends_the_lease_on_the_worker(stack):
    call = stack.router_stub().Generate(request("sim-one", max_tokens=200))
    assert (await call.read()).HasField("delta")
    call.cancel()
    engine = stack.workers[0].host.engines["sim-one"]
    core = stack.scheduler.coordinator.state
    await wait_until(lambda: engine.active_sequences() == 0 and core.active_leases() == 0)
    ends = stack.scheduler.metrics.registry.get_sample_value(
        "inference_scheduler_lease_ends_total", {"outcome": "cancelled"}
    )
    assert ends == 1
