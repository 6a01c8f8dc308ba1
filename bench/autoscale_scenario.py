"""A load step against a system whose workers come from the local actuator.

    result = await load_step(cluster, clients=12, load_s=15, trickle=1)

`clients` closed-loop streams run for `load_s` seconds (the step), then `trickle` streams
keep running while the fleet scales back down to its minimum, so that requests are in
flight on the workers being drained. Every request's outcome is recorded, and GetStatus is
sampled every `sample_s` to time the scaling: load step → desired count up → new worker
registered → first token from a new worker; end of the step → first drain → back at min.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from inference.v1 import router_pb2_grpc, scheduler_pb2_grpc, types_pb2

from bench.local_system import LocalSystem
from bench.sim_cluster import MODEL_ID


@dataclass
class Sample:
    t: float  # seconds since the load step
    desired: int
    current: int  # workers the scheduler counts (draining ones excluded)
    registered: int  # workers registered, draining ones included
    ready: int  # registered, accepting leases, model ready


@dataclass
class StepResult:
    outcomes: Counter = field(default_factory=Counter)  # status code name → requests
    served_by: Counter = field(default_factory=Counter)  # worker id → requests completed
    initial_workers: set[str] = field(default_factory=set)
    samples: list[Sample] = field(default_factory=list)
    load_s: float = 0.0
    first_new_token_s: float | None = None  # step → first token from a worker started for it
    ended_at_s: float | None = None  # step → the fleet back at its minimum

    def first(self, condition, after: float = 0.0) -> float | None:
        return next((s.t for s in self.samples if s.t >= after and condition(s)), None)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def peak_workers(self) -> int:
        return max((s.ready for s in self.samples), default=0)

    def timings(self, min_workers: int) -> dict[str, float | None]:
        start = self.samples[0].ready if self.samples else 0
        drained = self.first(lambda s: s.current < self.peak_workers, after=self.load_s)
        return {
            "step_to_desired_up_s": self.first(lambda s: s.desired > start),
            "step_to_new_worker_ready_s": self.first(lambda s: s.ready > start),
            "step_to_new_worker_first_token_s": self.first_new_token_s,
            "idle_to_first_drain_s": None if drained is None else drained - self.load_s,
            "idle_to_min_workers_s": (
                None if self.ended_at_s is None else self.ended_at_s - self.load_s
            ),
        }


async def _status(stub) -> types_pb2.GetStatusResponse:
    return await stub.GetStatus(types_pb2.GetStatusRequest(), timeout=5)


def _sample(status: types_pb2.GetStatusResponse, t: float) -> Sample:
    scaling = next((s for s in status.scaling if s.model_id == MODEL_ID), None)
    ready = sum(
        1
        for w in status.workers
        if w.state == types_pb2.WORKER_STATE_READY
        and any(m.state == types_pb2.MODEL_STATE_READY for m in w.models)
    )
    return Sample(
        t,
        scaling.desired_workers if scaling else 0,
        scaling.current_workers if scaling else 0,
        len(status.workers),
        ready,
    )


async def load_step(
    cluster: LocalSystem,
    clients: int,
    load_s: float,
    trickle: int = 1,
    min_workers: int = 1,
    max_tokens: int = 20,
    settle_timeout_s: float = 120.0,
    sample_s: float = 0.2,
) -> StepResult:
    """`clients` more clients for `load_s` over a `trickle` that never stops, then waits for
    the fleet to settle back at `min_workers`."""
    scheduler = f"127.0.0.1:{cluster.ports['scheduler']}"
    async with (
        grpc.aio.insecure_channel(cluster.router_address) as router_channel,
        grpc.aio.insecure_channel(scheduler) as scheduler_channel,
    ):
        status_stub = scheduler_pb2_grpc.SchedulerStub(scheduler_channel)
        step = _LoadStep(
            router_pb2_grpc.RouterStub(router_channel),
            status_stub,
            StepResult(load_s=load_s),
            min_workers,
            max_tokens,
        )
        step.result.initial_workers = {w.worker_id for w in (await _status(status_stub)).workers}
        sampling = asyncio.create_task(step.sample(sample_s))
        steady = [asyncio.create_task(step.client(i, step.settled)) for i in range(trickle)]
        burst = [
            asyncio.create_task(step.client(trickle + i, step.step_over)) for i in range(clients)
        ]
        await asyncio.sleep(load_s)
        step.step_over.set()
        await asyncio.gather(*burst)
        try:
            await asyncio.wait_for(step.settled.wait(), settle_timeout_s)
        except TimeoutError:
            step.settled.set()
        await asyncio.gather(*steady)
        await sampling
    return step.result


class _LoadStep:
    def __init__(self, router, status_stub, result: StepResult, min_workers, max_tokens) -> None:
        self.router, self.status_stub, self.result = router, status_stub, result
        self.min_workers, self.max_tokens = min_workers, max_tokens
        self.t0 = time.monotonic()
        self.step_over = asyncio.Event()
        self.settled = asyncio.Event()

    async def one_request(self, i: int) -> None:
        result = self.result
        request = types_pb2.GenerateRequest(
            model_id=MODEL_ID, prompt=f"load step {i}", max_tokens=self.max_tokens
        )
        worker = ""
        try:
            async for message in self.router.Generate(request, timeout=120):
                if message.HasField("summary"):
                    worker = message.summary.worker_id
            result.outcomes["OK"] += 1
            result.served_by[worker] += 1
            if worker not in result.initial_workers and result.first_new_token_s is None:
                # the summary arrives right after its last token: count from the first
                first = message.summary.time_to_first_token_ms / 1000.0
                took = message.summary.inference_time_ms / 1000.0
                result.first_new_token_s = time.monotonic() - self.t0 - took + first
        except grpc.aio.AioRpcError as exc:
            result.outcomes[exc.code().name] += 1

    async def client(self, index: int, until: asyncio.Event) -> None:
        n = 0
        while not until.is_set():
            await self.one_request(index * 100_000 + n)
            n += 1

    async def sample(self, interval_s: float) -> None:
        """Samples the fleet until it settled: the step is over and it is back at the
        minimum."""
        while not self.settled.is_set():
            sample = _sample(await _status(self.status_stub), time.monotonic() - self.t0)
            self.result.samples.append(sample)
            low = self.min_workers
            if self.step_over.is_set() and sample.current <= low and sample.registered <= low:
                self.result.ended_at_s = sample.t
                self.settled.set()
            await asyncio.sleep(interval_s)
