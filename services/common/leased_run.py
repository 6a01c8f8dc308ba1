"""Runs one request under a lease: the request's data path, owned in one place.

1. **Acquire**: the scheduler queues the request, decides and grants a lease (a slot on one
   worker, signed). It carries no tokens.
2. **Run**: the leased worker is called directly (`Worker.Execute` / `Worker.Embed`) with the
   signed lease; tokens stream from the worker to the caller.
3. **Resume**: when the lease ends before the stream (its worker died or failed, the scheduler
   revoked it to preempt it, its token was refused), a new lease is acquired with what was
   already streamed; the next worker continues after it, so the caller sees one stream with
   no token repeated. At most `max_resumes` times, then UNAVAILABLE.

A request problem the worker reports (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED) and a
passed deadline end the request with their own status. See docs/architecture.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from inference.v1 import scheduler_pb2, types_pb2, worker_pb2
from opentelemetry.trace import SpanKind

from services.common import tracing
from services.common.errors import DeadlineExceeded, Unavailable
from services.common.status import LEASE_END_KEY, PREEMPTED, REQUEST_CODES, answered, trailer
from services.common.tokens import estimate_tokens
from services.common.unreachable import UnreachableWorkers
from services.common.worker_channels import WorkerChannels

log = logging.getLogger(__name__)
TRACER = tracing.tracer("services.common.leased_run")

# Given a ticket and the seconds left, waits for a lease (Scheduler.Acquire).
Acquire = Callable[[scheduler_pb2.AcquireRequest, float], Awaitable[scheduler_pb2.LeaseGrant]]

# A request whose leases failed on this many workers (the worker answered a failure, or its
# process died under it) is not moved again: it may be what breaks them (poison).
POISON_AFTER_FAILURES = 2
AFFINITY_CHARS = 256  # prefix-affinity placement hashes about the first 64 tokens


def generate_ticket(
    request: types_pb2.GenerateRequest, tenant_id: str, tenant_weight: float = 1.0
) -> scheduler_pb2.AcquireRequest:
    """What the scheduler needs of a generation request: no prompt, its size."""
    return scheduler_pb2.AcquireRequest(
        request_id=request.request_id,
        model_id=request.model_id,
        priority=request.priority,
        tenant_id=tenant_id,
        tenant_weight=tenant_weight,
        prompt_tokens=estimate_tokens(request.prompt),
        max_tokens=request.max_tokens,
        affinity_key=request.prompt[:AFFINITY_CHARS],
        allow_fallback=request.allow_fallback,
    )


def embed_ticket(request: types_pb2.EmbedRequest, tenant_id: str) -> scheduler_pb2.AcquireRequest:
    """What the scheduler needs of an embedding request: no inputs, their size."""
    return scheduler_pb2.AcquireRequest(
        request_id=request.request_id,
        model_id=request.model_id,
        priority=request.priority,
        tenant_id=tenant_id,
        prompt_tokens=sum(estimate_tokens(text) for text in request.inputs),
    )


class LeaseLost(Exception):
    """The lease ended before the request did; the request may resume on a new one."""

    def __init__(self, outcome: int, worker_id: str) -> None:
        super().__init__(f"{types_pb2.LeaseOutcome.Name(outcome)} on {worker_id}")
        self.outcome = outcome
        self.worker_id = worker_id


@dataclass
class Attempts:
    """What a request has been through: its leases, and what it streamed under them."""

    admitted_at: float  # clock seconds when the run started
    texts: list[str] = field(default_factory=list)  # deltas sent, joined only on a resume
    tokens: int = 0  # tokens streamed so far, every lease
    prompt_tokens: int = 0  # the prompt's length, as the first lease's worker reported it
    leases: int = 0  # leases granted
    # the workers whose lease of it ended with the worker failing (one that failed it twice,
    # as it died and then refused it, counts once)
    failed_on: set[str] = field(default_factory=set)
    queue_ms: float = 0.0  # time spent waiting for leases
    resubmission: scheduler_pb2.Resubmission | None = None

    def resume_state(self) -> types_pb2.ResumeState | None:
        if not self.tokens and not self.texts:
            return None
        return types_pb2.ResumeState(
            generated_text="".join(self.texts), generated_tokens=self.tokens
        )

    def lost(
        self, grant: scheduler_pb2.LeaseGrant, lost: LeaseLost, tokens_before: int, now: float
    ) -> None:
        """Notes a lease that ended early; the next acquire resubmits the request."""
        self.resubmission = scheduler_pb2.Resubmission(
            waited_ms=(now - self.admitted_at) * 1000.0,
            generated_tokens=self.tokens,
            previous_lease_id=grant.lease_id,
            previous_worker_id=grant.worker_id,
            previous_outcome=lost.outcome,
            previous_lease_tokens=self.tokens - tokens_before,
        )


class LeasedRun:
    def __init__(
        self,
        acquire: Acquire,
        workers: WorkerChannels,
        max_resumes: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._acquire = acquire
        self._workers = workers
        self._max_resumes = max_resumes
        self._clock = clock
        self.unreachable = UnreachableWorkers(clock)  # named in every ticket

    async def generate(
        self,
        ticket: scheduler_pb2.AcquireRequest,
        request: types_pb2.GenerateRequest,
        deadline: float,
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        """The request's stream: deltas, then one summary whose counts cover every lease.
        `deadline`: clock seconds by which it must be done."""
        attempts = Attempts(self._clock())
        if request.HasField("resume"):  # a client continuing a stream another router ran
            attempts.texts.append(request.resume.generated_text)
            attempts.tokens = request.resume.generated_tokens
        while True:
            grant = await self._lease(ticket, attempts, deadline)
            tokens_before = attempts.tokens
            try:
                async for message in self._execute(grant, ticket, request, attempts, deadline):
                    yield message
                return
            except LeaseLost as lost:
                self._resume(grant, lost, attempts, tokens_before)

    async def embed(
        self,
        ticket: scheduler_pb2.AcquireRequest,
        request: types_pb2.EmbedRequest,
        deadline: float,
    ) -> types_pb2.EmbedResponse:
        attempts = Attempts(self._clock())
        while True:
            grant = await self._lease(ticket, attempts, deadline)
            call = worker_pb2.ExecuteEmbedRequest(
                lease_id=grant.lease_id,
                request=request,
                tenant_id=ticket.tenant_id,
                lease=grant.token,
            )
            span = _attempt_span(grant, attempts)
            try:
                response = await self._workers.stub(grant.worker_address).Embed(
                    call,
                    timeout=self._remaining(deadline),
                    metadata=tracing.outgoing_metadata(span),
                )
            except grpc.aio.AioRpcError as exc:
                failure = self._failure(exc, grant)
                if not isinstance(failure, LeaseLost):
                    raise failure from None
                self._resume(grant, failure, attempts, 0)
                continue
            finally:
                span.end()
            self.unreachable.answered(grant.worker_id)
            response.queue_time_ms = attempts.queue_ms
            return response

    async def _lease(
        self, ticket: scheduler_pb2.AcquireRequest, attempts: Attempts, deadline: float
    ) -> scheduler_pb2.LeaseGrant:
        if attempts.resubmission is not None:
            ticket.resubmission.CopyFrom(attempts.resubmission)
        del ticket.unreachable_workers[:]
        ticket.unreachable_workers.extend(self.unreachable.now())
        grant = await self._acquire(ticket, self._remaining(deadline))
        attempts.leases += 1
        attempts.queue_ms += grant.queue_time_ms
        # a resumed request stays on the model and budget it was first admitted with
        ticket.model_id, ticket.allow_fallback = grant.model_id, False
        ticket.max_tokens = grant.max_tokens
        return grant

    async def _execute(
        self,
        grant: scheduler_pb2.LeaseGrant,
        ticket: scheduler_pb2.AcquireRequest,
        request: types_pb2.GenerateRequest,
        attempts: Attempts,
        deadline: float,
    ) -> AsyncIterator[types_pb2.GenerateResponse]:
        """One lease: the worker's stream, continuing after what was already sent."""
        req = types_pb2.GenerateRequest()
        req.CopyFrom(request)
        req.model_id, req.max_tokens = grant.model_id, grant.max_tokens
        req.ClearField("resume")  # the worker continues after `resume` below, every lease's
        execute = worker_pb2.ExecuteRequest(
            lease_id=grant.lease_id,
            request=req,
            tenant_id=ticket.tenant_id,
            resume=attempts.resume_state(),
            lease=grant.token,
        )
        tokens_before = attempts.tokens
        span = _attempt_span(grant, attempts)
        call = self._workers.stub(grant.worker_address).Execute(
            execute, timeout=self._remaining(deadline), metadata=tracing.outgoing_metadata(span)
        )
        try:
            async for message in call:
                if message.HasField("delta"):
                    attempts.texts.append(message.delta.text)
                    attempts.tokens += message.delta.token_count
                    _prompt_once(message.delta, attempts)
                else:
                    _complete(message.summary, grant, attempts, tokens_before)
                    self.unreachable.answered(grant.worker_id)
                yield message
                if message.HasField("summary"):
                    return
        except grpc.aio.AioRpcError as exc:
            raise self._failure(exc, grant) from None
        finally:
            call.cancel()
            span.end()
        log.warning("worker %s ended a stream without a summary", grant.worker_id)
        raise LeaseLost(types_pb2.LEASE_OUTCOME_FAILED, grant.worker_id)

    def _resume(
        self,
        grant: scheduler_pb2.LeaseGrant,
        lost: LeaseLost,
        attempts: Attempts,
        tokens_before: int,
    ) -> None:
        if lost.outcome == types_pb2.LEASE_OUTCOME_FAILED:
            attempts.failed_on.add(grant.worker_id)
            if len(attempts.failed_on) >= POISON_AFTER_FAILURES:
                raise Unavailable(
                    f"the request failed on {len(attempts.failed_on)} workers; it is not retried "
                    "(it may be what makes the model fail)"
                )
        if attempts.leases > self._max_resumes:
            raise Unavailable(f"the request lost its worker {attempts.leases} times; giving up")
        log.info(
            "lease %s ended early (%s); resuming after %d tokens",
            grant.lease_id,
            types_pb2.LeaseOutcome.Name(lost.outcome),
            attempts.tokens,
        )
        attempts.lost(grant, lost, tokens_before, self._clock())

    def _failure(self, exc: grpc.aio.AioRpcError, grant: scheduler_pb2.LeaseGrant) -> Exception:
        """`_failure`, and a worker whose call went unanswered is avoided a while."""
        if exc.code() == grpc.StatusCode.UNAVAILABLE and not answered(exc):
            self.unreachable.failed(grant.worker_id)
        return _failure(exc, grant)

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed")
        return remaining


def _complete(
    summary: types_pb2.GenerationSummary,
    grant: scheduler_pb2.LeaseGrant,
    attempts: Attempts,
    tokens_before: int,
) -> None:
    """Makes the worker's summary cover the whole request (every lease)."""
    summary.completion_tokens += tokens_before
    summary.prompt_tokens = attempts.prompt_tokens or summary.prompt_tokens
    summary.queue_time_ms = attempts.queue_ms
    summary.gpu_id = summary.gpu_id or grant.gpu_id


def _prompt_once(delta: types_pb2.TokenDelta, attempts: Attempts) -> None:
    """The prompt's length goes out once: a resumed lease's worker counts the streamed text
    as prompt too, which the caller never sent."""
    if attempts.prompt_tokens:
        delta.prompt_tokens = 0
    else:
        attempts.prompt_tokens = delta.prompt_tokens


def _failure(exc: grpc.aio.AioRpcError, grant: scheduler_pb2.LeaseGrant) -> Exception:
    """A worker's error status: the request's own problem as is, a passed deadline as
    DEADLINE_EXCEEDED, a revoked lease as LeaseLost(PREEMPTED), anything else (worker gone,
    model failed, lease refused) as LeaseLost."""
    code = exc.code()
    if code in REQUEST_CODES and answered(exc):
        return exc  # relayed unchanged by the error interceptor
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("deadline passed while generating")
    if code == grpc.StatusCode.ABORTED and trailer(exc, LEASE_END_KEY) == PREEMPTED:
        return LeaseLost(types_pb2.LEASE_OUTCOME_PREEMPTED, grant.worker_id)
    if code == grpc.StatusCode.PERMISSION_DENIED and answered(exc):
        log.warning(
            "worker %s refused lease %s: %s", grant.worker_id, grant.lease_id, exc.details()
        )
        return LeaseLost(types_pb2.LEASE_OUTCOME_EXPIRED, grant.worker_id)
    log.warning("worker %s failed a request: %s %s", grant.worker_id, code, exc.details())
    return LeaseLost(types_pb2.LEASE_OUTCOME_FAILED, grant.worker_id)


def _attempt_span(grant: scheduler_pb2.LeaseGrant, attempts: Attempts):
    """The span of one lease's run (not made current: it only parents the worker's span)."""
    return TRACER.start_span(
        "lease.execute",
        kind=SpanKind.CLIENT,
        attributes={
            "inference.lease": grant.lease_id,
            "inference.worker": grant.worker_id,
            "inference.gpu_id": grant.gpu_id,
            "inference.attempt": attempts.leases,
            "inference.resume_tokens": attempts.tokens,
        },
    )
