"""Issue 26: a router's Acquire calls on one stream (Scheduler.Tickets). Tickets sent together
are answered each, by number, grants and refusals alike; a withdrawn ticket, and every ticket of
a stream that closes, leaves the queue; a router whose scheduler has no ticket stream (the
previous release) acquires with a call each; a scheduler that stops ends its streams, and the
router submits their tickets again."""

import asyncio

import grpc
import pytest
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

from services.common.errors import NotFound
from services.router.scheduler_client import SchedulerClient
from services.scheduler.config import with_overrides
from services.scheduler.server import SchedulerServer
from tests.service.test_scheduling import queued, wait_until
from tests.stack import request


def ticket(number: int, request_id: str, model_id: str = "sim-slow", timeout_ms: int = 30_000):
    return scheduler_pb2.Ticket(
        number=number,
        request=scheduler_pb2.AcquireRequest(
            request_id=request_id, model_id=model_id, tenant_id="anonymous", max_tokens=1
        ),
        timeout_ms=timeout_ms,
    )


async def test_tickets_sent_together_are_each_answered_by_number(one_slot):
    call = one_slot.scheduler_stub().Tickets()
    batch = scheduler_pb2.TicketBatch(
        tickets=[
            ticket(7, "granted"),
            ticket(8, "unknown model", model_id="no-such-model"),
            ticket(9, ""),  # no request id
        ]
    )
    await call.write(batch)
    answers: dict[int, scheduler_pb2.TicketAnswer] = {}
    while len(answers) < 3:
        message = await asyncio.wait_for(call.read(), 5)
        answers.update({a.number: a for a in message.answers})
    call.cancel()
    assert answers[7].grant.lease_id and answers[7].grant.worker_id
    assert answers[7].grant.token.claims  # signed, as Acquire's grant
    assert answers[8].refusal.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-model" in answers[8].refusal.message
    assert answers[9].refusal.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_a_withdrawn_ticket_and_a_closed_streams_tickets_leave_the_queue(one_slot):
    blocker = asyncio.ensure_future(
        one_slot.router_stub().Infer(request("sim-slow", max_tokens=100))
    )
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 1)
    call = one_slot.scheduler_stub().Tickets()
    await call.write(scheduler_pb2.TicketBatch(tickets=[ticket(1, "a"), ticket(2, "b")]))
    await wait_until(lambda: queued(one_slot) == 2)
    await call.write(scheduler_pb2.TicketBatch(withdrawn=[1]))
    await wait_until(lambda: queued(one_slot) == 1)
    # a ticket withdrawn in the batch that carries it never waits
    await call.write(scheduler_pb2.TicketBatch(tickets=[ticket(3, "c")], withdrawn=[3]))
    # a ticket read after it, answered at once: by then "c" would have been queued
    await call.write(scheduler_pb2.TicketBatch(tickets=[ticket(4, "d", model_id="no-such")]))
    message = await asyncio.wait_for(call.read(), 5)
    assert [a.number for a in message.answers] == [4]
    assert queued(one_slot) == 1  # "b" alone
    await call.done_writing()  # the router's side closed: "b" is nobody's any more
    await wait_until(lambda: queued(one_slot) == 0)
    assert await asyncio.wait_for(call.read(), 5) == grpc.aio.EOF  # never answered
    await blocker


async def test_a_ticket_whose_deadline_passes_in_the_queue_is_refused_with_deadline_exceeded(
    one_slot,
):
    blocker = asyncio.ensure_future(
        one_slot.router_stub().Infer(request("sim-slow", max_tokens=30))
    )
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 1)
    call = one_slot.scheduler_stub().Tickets()
    await call.write(scheduler_pb2.TicketBatch(tickets=[ticket(3, "late", timeout_ms=200)]))
    message = await asyncio.wait_for(call.read(), 5)
    [answer] = message.answers
    assert answer.number == 3
    assert answer.refusal.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    call.cancel()
    await blocker


async def test_the_routers_client_raises_a_refusal_as_the_error_it_stands_for(one_slot):
    client = SchedulerClient(one_slot.scheduler_stub(), wait_s=1.0)
    grant = await client.acquire(ticket(0, "ok").request, 5.0)
    assert grant.worker_id
    with pytest.raises(NotFound):
        await client.acquire(ticket(0, "missing", model_id="no-such-model").request, 5.0)
    await client.close()


class PreviousRelease(scheduler_pb2_grpc.SchedulerServicer):
    """A scheduler of the previous release: Acquire, and no Tickets (UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.calls = 0
        self.streams = 0  # Tickets calls it refused

    async def Acquire(self, request, context):
        self.calls += 1
        return scheduler_pb2.LeaseGrant(lease_id=f"lease-{request.request_id}", worker_id="w")

    async def Tickets(self, request_iterator, context):
        self.streams += 1
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


async def test_a_scheduler_without_a_ticket_stream_gets_a_call_each_and_is_tried_again_later():
    server = grpc.aio.server()
    previous = PreviousRelease()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(previous, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = SchedulerClient(scheduler_pb2_grpc.SchedulerStub(channel), wait_s=1.0)
            for n in range(3):
                request_ = scheduler_pb2.AcquireRequest(
                    request_id=f"r{n}", model_id="m", priority=types_pb2.PRIORITY_LOW
                )
                grant = await client.acquire(request_, 5.0)
                assert grant.lease_id == f"lease-r{n}"
            assert (previous.calls, previous.streams) == (3, 1)  # one try, then calls
            client._tickets._unsupported_until = 0.0  # a minute later: upgraded since?
            await client.acquire(scheduler_pb2.AcquireRequest(request_id="r4", model_id="m"), 5)
            assert (previous.calls, previous.streams) == (4, 2)  # tried again, then a call
            await client.close()
    finally:
        await server.stop(0)


async def test_a_stopping_scheduler_ends_its_ticket_streams_and_the_router_submits_again(
    one_slot,
):
    stub = one_slot.router_stub()
    blocker = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=50)))
    await wait_until(lambda: one_slot.scheduler.coordinator.state.active_leases() == 1)
    waiting = asyncio.ensure_future(stub.Infer(request("sim-slow", max_tokens=2), timeout=30))
    await wait_until(lambda: queued(one_slot) == 1)
    old = one_slot.scheduler
    loop = asyncio.get_running_loop()
    began = loop.time()
    await old.stop(10.0)
    assert loop.time() - began < 5.0  # no ticket stream held it for its grace period
    one_slot.scheduler = SchedulerServer(  # waits for its workers, as a restarted one does
        with_overrides(old.config, listen=one_slot.scheduler_address, recovery_s=5.0)
    )
    await one_slot.scheduler.start()
    answer = await waiting  # submitted again, to the scheduler that took over
    assert answer.completion_tokens == 2
    await blocker


async def test_a_ticket_message_that_does_not_parse_ends_its_stream_alone(one_slot):
    channel = grpc.aio.insecure_channel(one_slot.scheduler_address)
    raw = channel.stream_stream(
        "/inference.v1.Scheduler/Tickets",
        request_serializer=lambda data: data,
        response_deserializer=scheduler_pb2.TicketAnswers.FromString,
    )()
    await raw.write(b"\xff\xff\xff\xff")  # not a TicketBatch
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(raw.read(), 5)
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await channel.close()
    call = one_slot.scheduler_stub().Tickets()  # another stream is served as before
    await call.write(scheduler_pb2.TicketBatch(tickets=[ticket(1, "after")]))
    message = await asyncio.wait_for(call.read(), 5)
    assert message.answers[0].grant.lease_id
    call.cancel()
