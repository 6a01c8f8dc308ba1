"""Many simulated GPU workers in one process, for the fleet simulation (bench/fleet.py).

    python -m bench.fleet_host --config CFG --scheduler HOST:PORT --workers 500 --first 0

Each simulated worker is a real `WorkerSession` with the scheduler (registration, heartbeats
with the leases it runs, LeaseEnded reports, revocations obeyed) and takes real leases: one
`inference.v1.Worker` server for the whole process checks each presented lease's signature
and claims (`services.common.lease_token`), then runs it with the simulated engine's timing
(prefill, then one step per token, the step slowing with the batch as the model's GPU profile
says) and answers one delta and a summary. No tokens are computed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2, worker_pb2_grpc

from services.common.catalog import ModelSpec, parse_catalog
from services.common.config import read_toml
from services.common.lease_token import LeaseRefused, LeaseVerifier, check_claims
from services.common.server import SESSION_CHANNEL_OPTIONS
from services.common.status import LEASE_END_KEY, PREEMPTED
from services.gpu_worker import convert
from services.gpu_worker.engines.simulated import step_seconds
from services.gpu_worker.quiet_heartbeats import QuietHeartbeats
from services.gpu_worker.session import lease_ends_message

HEARTBEAT = object()


@dataclass
class SimWorker:
    worker_id: str
    gpu_id: str
    spec: ModelSpec
    running: dict[str, asyncio.Event] = field(default_factory=dict)  # lease → revoked
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    interval_s: float = 1.0
    quiet: QuietHeartbeats = field(default_factory=QuietHeartbeats)

    def model(self) -> types_pb2.WorkerModel:
        return types_pb2.WorkerModel(
            info=convert.model_info(self.spec),
            state=types_pb2.MODEL_STATE_READY,
            max_slots=self.spec.max_slots,
            active_sequences=len(self.running),
        )

    def device(self) -> types_pb2.DeviceTelemetry:
        return types_pb2.DeviceTelemetry(gpu_id=self.gpu_id, name="simulated H100")


class Host(worker_pb2_grpc.WorkerServicer):
    def __init__(self, workers: dict[str, SimWorker], address: str) -> None:
        self.workers = workers
        self.address = address
        self.verifier = LeaseVerifier()
        self.presented: set[str] = set()

    async def Execute(self, request, context):
        try:
            claims = self.verifier.claims(request.lease)
            worker = self.workers.get(claims.worker_id)
            if worker is None:
                raise LeaseRefused(f"lease {claims.lease_id} is for another worker")
            now_ms = int(time.time() * 1000)
            req = request.request
            check_claims(claims, worker.worker_id, req.request_id, req.model_id, now_ms)
            if claims.lease_id in self.presented:
                raise LeaseRefused(f"lease {claims.lease_id} was presented already")
        except LeaseRefused as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        self.presented.add(claims.lease_id)
        async for message in self._run(worker, claims, request, context):
            yield message

    async def _run(self, worker: SimWorker, claims, request, context):
        spec, req = worker.spec, request.request
        tokens = min(req.max_tokens or spec.default_max_tokens, claims.max_tokens or 10**9)
        tokens = max(0, tokens - request.resume.generated_tokens)
        revoked = asyncio.Event()
        worker.running[claims.lease_id] = revoked
        profile = spec.simulation.profiles[spec.simulation.gpu_type]
        prompt = len(req.prompt) // 4 + 1
        started = time.monotonic()
        outcome = types_pb2.LEASE_OUTCOME_COMPLETED
        try:
            step = step_seconds(profile, len(worker.running))
            duration = prompt / profile.prefill_tokens_per_s + tokens * step
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(revoked.wait(), duration)
            if revoked.is_set():
                outcome = types_pb2.LEASE_OUTCOME_PREEMPTED
                context.set_trailing_metadata(((LEASE_END_KEY, PREEMPTED),))
                await context.abort(grpc.StatusCode.ABORTED, "preempted")
            yield types_pb2.GenerateResponse(
                request_id=req.request_id,
                delta=types_pb2.TokenDelta(text="x" * tokens, token_count=tokens),
            )
            yield types_pb2.GenerateResponse(
                request_id=req.request_id,
                summary=types_pb2.GenerationSummary(
                    finish_reason=types_pb2.FINISH_REASON_LENGTH,
                    prompt_tokens=prompt,
                    completion_tokens=tokens,
                    inference_time_ms=(time.monotonic() - started) * 1000.0,
                    worker_id=worker.worker_id,
                    gpu_id=worker.gpu_id,
                    model_id=req.model_id,
                ),
            )
        except asyncio.CancelledError:
            outcome = types_pb2.LEASE_OUTCOME_CANCELLED
            raise
        finally:
            worker.running.pop(claims.lease_id, None)
            ended = scheduler_pb2.LeaseEnded(
                lease_id=claims.lease_id,
                outcome=outcome,
                prompt_tokens=prompt,
                completion_tokens=tokens if outcome == types_pb2.LEASE_OUTCOME_COMPLETED else 0,
            )
            worker.outbox.put_nowait(scheduler_pb2.WorkerSessionRequest(lease_ended=ended))


async def session_forever(host: Host, worker: SimWorker, stub) -> None:
    """The worker's WorkerSession, opened again whenever it breaks."""
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await _session(host, worker, stub)
        await asyncio.sleep(0.5 + random.random())


async def _session(host: Host, worker: SimWorker, stub) -> None:
    async def outgoing():
        yield scheduler_pb2.WorkerSessionRequest(
            registration=scheduler_pb2.WorkerRegistration(
                worker_id=worker.worker_id,
                address=host.address,
                device=worker.device(),
                models=[worker.model()],
            )
        )
        sequence, loop = 0, asyncio.get_running_loop()
        due = loop.time() + worker.interval_s
        while True:  # heartbeats keep their interval however many lease ends go between
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(worker.outbox.get(), max(0.0, due - loop.time()))
                yield _reported_in_a_row(first, worker.outbox)
                continue
            due = loop.time() + worker.interval_s
            beat = scheduler_pb2.WorkerHeartbeat(
                sequence=sequence + 1,
                device=worker.device(),
                models=[worker.model()],
                healthy=True,
                lease_ids=list(worker.running),
            )
            if worker.quiet.worth_sending(beat):
                sequence += 1
                yield scheduler_pb2.WorkerSessionRequest(heartbeat=beat)

    call = stub.WorkerSession(outgoing())
    async for command in call:
        kind = command.WhichOneof("command")
        if kind == "accepted":
            host.verifier.add_key(command.accepted.lease_public_key)
            worker.interval_s = command.accepted.heartbeat_interval_ms / 1000.0
            worker.quiet.restart(command.accepted.quiet_heartbeats)
        elif kind == "revoke_lease":
            revoked = worker.running.get(command.revoke_lease.lease_id)
            if revoked is not None:
                revoked.set()


def _reported_in_a_row(
    first: scheduler_pb2.WorkerSessionRequest, outbox: asyncio.Queue
) -> scheduler_pb2.WorkerSessionRequest:
    """The lease ends queued now, in one message, as a worker reports them."""
    ended = [first.lease_ended]
    while not outbox.empty():
        ended.append(outbox.get_nowait().lease_ended)
    return lease_ends_message(ended)


async def serve(args: argparse.Namespace) -> None:
    spec = parse_catalog(read_toml(args.config)["models"])[args.model]
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100_000)])
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    workers = {
        f"sim-{i}": SimWorker(f"sim-{i}", f"gpu-{i % 8}", spec)
        for i in range(args.first, args.first + args.workers)
    }
    host = Host(workers, f"127.0.0.1:{port}")
    worker_pb2_grpc.add_WorkerServicer_to_server(host, server)
    await server.start()
    print(f"port {port}", flush=True)
    async with contextlib.AsyncExitStack() as channels:
        shared = await channels.enter_async_context(channel_to(args.scheduler))
        sessions = []
        for worker in workers.values():  # spread the registrations over a second or two
            channel = shared
            if args.channel_per_worker:  # as real workers: a connection each, pinged each
                channel = await channels.enter_async_context(channel_to(args.scheduler))
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            sessions.append(asyncio.create_task(session_forever(host, worker, stub)))
            await asyncio.sleep(0.002)
        await asyncio.gather(*sessions)


def channel_to(address: str) -> grpc.aio.Channel:
    """A channel with the options a worker's session channel has (its keepalive pings)."""
    return grpc.aio.insecure_channel(address, options=SESSION_CHANNEL_OPTIONS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--model", default="sim")
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--channel-per-worker", action="store_true")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
