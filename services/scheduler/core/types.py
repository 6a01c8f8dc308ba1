"""Domain types of the scheduler core. No grpc, asyncio, torch or pynvml here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    """Lower value is served first. Values match inference.v1.Priority."""

    HIGH = 1
    MEDIUM = 2
    LOW = 3


PRIORITIES = tuple(Priority)  # high first; iterating the enum class itself costs 1 µs a loop


class Outcome(enum.Enum):
    """How a lease ended. Values match inference.v1.LeaseOutcome's names."""

    COMPLETED = "completed"
    FAILED = "failed"  # the worker or its model failed the request
    CANCELLED = "cancelled"  # the caller went away
    PREEMPTED = "preempted"  # revoked for a waiting higher class
    DEADLINE = "deadline"
    REJECTED = "rejected"  # the request itself was refused by the worker
    LOST = "lost"  # its worker died or went silent before reporting
    EXPIRED = "expired"  # granted, never presented to the worker in time


class WorkerState(enum.Enum):
    READY = "ready"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class ModelCatalogEntry:
    """What the scheduler knows of a model before any worker has it."""

    model_id: str
    simulated: bool
    max_context_tokens: int
    max_output_tokens: int
    default_max_tokens: int
    kind: str = "generative"
    description: str = ""
    memory_bytes: int = 0  # device memory its weights need; 0: unknown (assumed to fit)
    max_slots: int = 4  # concurrent sequences per worker, until a worker reports its own

    @property
    def default_output_tokens(self) -> int:
        """max_tokens of a request that names none (embeddings generate nothing)."""
        return self.default_max_tokens if self.kind == "generative" else 0


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A request waiting in the queue for a lease. Its derived figures (`kv_tokens`,
    `order`, `charge_estimate`) are worked out once, when it is made (a decision reads them
    several times)."""

    request_id: str
    model_id: str
    priority: Priority
    tenant_id: str
    enqueued_at: float  # clock seconds
    prompt_tokens: int = 0  # estimate, before the model's tokenizer has seen the prompt
    max_tokens: int = 0
    tenant_weight: float = 1.0  # the tenant's share within its priority class
    deadline: float | None = None  # clock seconds by which it must be done; None: none
    affinity_key: str = ""  # the prompt's first characters, for prefix-affinity placement
    prefix_blocks: tuple[int, ...] = ()  # the prompt's block-hash chain, for kv_aware
    unreachable: tuple[str, ...] = ()  # workers its router cannot reach: others first
    avoid_worker: str = ""  # a worker that just failed it: another is preferred
    resumed: bool = False  # it held a lease before: admitted already, its prompt charged
    resumed_tokens: int = 0  # tokens it generated before; they count against max_tokens
    sequence: int = 0  # assigned by the queue: FIFO order among equal arrival times
    # assigned by the queue: its arrival number within its (class, model); -1 when it arrived
    # before a request already there (resubmitted)
    class_sequence: int = -1
    # the KV-cache budget its lease will hold: prompt plus max_tokens
    kv_tokens: int = field(init=False, compare=False, repr=False)
    # arrival order: a resubmitted request keeps the place its arrival time gives it
    order: tuple[float, int] = field(init=False, compare=False, repr=False)
    # tokens fairness charges when it is granted (corrected when its lease ends): the prompt,
    # unless an earlier lease paid for it, and the tokens it may still generate
    charge_estimate: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        derive = object.__setattr__
        derive(self, "kv_tokens", self.prompt_tokens + self.max_tokens)
        derive(self, "order", (self.enqueued_at, self.sequence))
        prompt = 0 if self.resumed else self.prompt_tokens
        derive(self, "charge_estimate", prompt + max(0, self.max_tokens - self.resumed_tokens))


@dataclass
class ModelSlots:
    """One model on one worker: its slots, KV-token budget and readiness."""

    model_id: str
    max_slots: int
    ready: bool
    kv_capacity: int = 0  # KV-cache tokens the worker holds for the model; 0: no budget
    active: int = 0  # leases held now
    kv_reserved: int = 0  # KV tokens those leases reserved
    memory_bytes: int = 0  # device memory the model's weights take there

    @property
    def free(self) -> int:
        return max(0, self.max_slots - self.active) if self.ready else 0

    def kv_room(self) -> float:
        """KV tokens one more lease may reserve here; -1 when no slot is free. A lone
        lease always fits (the model's context bounds it)."""
        if not self.free:
            return -1
        if self.kv_capacity <= 0 or self.active == 0:
            return float("inf")
        return self.kv_capacity - self.kv_reserved

    def fits(self, kv_tokens: int) -> bool:
        return kv_tokens <= self.kv_room()


@dataclass
class WorkerRecord:
    """One registered worker as the lease table tracks it."""

    worker_id: str
    address: str
    gpu_id: str
    models: dict[str, ModelSlots]
    last_heartbeat: float  # clock seconds
    state: WorkerState = WorkerState.READY
    leases: set[str] = field(default_factory=set)
    loadable: dict[str, int] = field(default_factory=dict)  # model → memory it would need
    memory_budget: int = 0  # device memory models may take; 0: unknown (placement skips it)
    latency_ms: float | None = None  # moving average of time to first token
    suspect: bool = False  # a call to it just failed: no leases until its next heartbeat

    @property
    def accepts_leases(self) -> bool:
        return self.state is WorkerState.READY and not self.suspect

    def memory_free(self) -> int:
        """Memory budget left after the models it holds (reported, else expected, sizes)."""
        return self.memory_budget - sum(
            max(s.memory_bytes, self.loadable.get(m, 0)) for m, s in self.models.items()
        )


@dataclass(slots=True, init=False)
class Lease:
    """A slot on one worker for one request, holding `kv_tokens` of its KV cache. Nothing
    changes a lease after its grant; it is not frozen only because a frozen dataclass takes
    three times as long to build, and its constructor is written out because the compiled
    core (services.scheduler.core.compiled_build) compiles only a written one (one is built per
    decision: docs/architecture.md)."""

    lease_id: str
    request_id: str
    worker_id: str
    worker_address: str
    gpu_id: str
    model_id: str
    granted_at: float  # clock seconds
    priority: Priority
    tenant_id: str
    kv_tokens: int
    tenant_weight: float
    charged: float  # tokens fairness charged at grant, before the tenant's weight
    resumed: bool  # the request held a lease before (its prompt was charged then)
    max_tokens: int  # as admitted, resumed tokens included

    def __init__(
        self,
        lease_id: str,
        request_id: str,
        worker_id: str,
        worker_address: str,
        gpu_id: str,
        model_id: str,
        granted_at: float,
        priority: Priority = Priority.MEDIUM,
        tenant_id: str = "",
        kv_tokens: int = 0,
        tenant_weight: float = 1.0,
        charged: float = 0.0,
        resumed: bool = False,
        max_tokens: int = 0,
    ) -> None:
        self.lease_id, self.request_id, self.worker_id = lease_id, request_id, worker_id
        self.worker_address, self.gpu_id, self.model_id = worker_address, gpu_id, model_id
        self.granted_at, self.priority, self.tenant_id = granted_at, priority, tenant_id
        self.kv_tokens, self.tenant_weight, self.charged = kv_tokens, tenant_weight, charged
        self.resumed, self.max_tokens = resumed, max_tokens


@dataclass(frozen=True)
class Usage:
    """What a worker reports of a lease that ended: the tokens it really took."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_ms: float = 0.0


@dataclass(frozen=True)
class RevokeLease:
    """A command to a worker: end a running lease early (to preempt it)."""

    worker_id: str
    lease_id: str
    reason: str = Outcome.PREEMPTED.value


@dataclass(frozen=True)
class ModelView:
    entry: ModelCatalogEntry
    ready_workers: int


@dataclass(frozen=True)
class Ticket:
    """A request as it asks for a lease: no prompt, its size (see inference.v1.AcquireRequest)."""

    request_id: str  # unique among waiting requests (tenant-scoped by the caller)
    model_id: str
    priority: Priority
    tenant_id: str
    prompt_tokens: int = 0  # estimate, before the model's tokenizer has seen the prompt
    max_tokens: int = 0  # 0: the model's default
    tenant_weight: float = 1.0
    deadline: float | None = None  # clock seconds
    affinity_key: str = ""
    allow_fallback: bool = False  # it may be served by a smaller model under load
    prefix_blocks: tuple[int, ...] = ()  # the prompt's block-hash chain (kv_aware placement)
    unreachable: tuple[str, ...] = ()  # workers its router cannot reach now

    def pending(self, enqueued_at: float, model_id: str, max_tokens: int) -> PendingRequest:
        """The request as it waits in the queue, on the model and budget it was admitted to."""
        return PendingRequest(
            self.request_id,
            model_id,
            self.priority,
            self.tenant_id,
            enqueued_at,
            prompt_tokens=self.prompt_tokens,
            max_tokens=max_tokens,
            tenant_weight=self.tenant_weight,
            deadline=self.deadline,
            affinity_key=self.affinity_key,
            prefix_blocks=self.prefix_blocks,
            unreachable=self.unreachable,
        )


@dataclass(frozen=True)
class Resubmission:
    """A request a router submits again (see inference.v1.Resubmission)."""

    waited_s: float = 0.0  # since the router admitted it: keeps its place in arrival order
    generated_tokens: int = 0  # streamed already; they count against max_tokens
    previous_lease_id: str = ""  # empty: it never held a lease (its scheduler went away)
    previous_worker_id: str = ""
    previous_outcome: Outcome = Outcome.LOST
    previous_lease_tokens: int = 0  # streamed under the previous lease
