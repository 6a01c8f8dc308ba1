"""Domain types of the scheduler core. No grpc, asyncio, torch or pynvml here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    """Lower value is served first. Values match inference.v1.Priority."""

    HIGH = 1
    MEDIUM = 2
    LOW = 3


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


@dataclass(frozen=True)
class PendingRequest:
    """A request waiting in the queue for a lease."""

    request_id: str
    model_id: str
    priority: Priority
    tenant_id: str
    enqueued_at: float  # clock seconds
    sequence: int = 0  # assigned by the queue: FIFO order across models


@dataclass
class ModelSlots:
    """One model on one worker: its slots and readiness."""

    model_id: str
    max_slots: int
    ready: bool
    active: int = 0  # leases held now

    @property
    def free(self) -> int:
        return max(0, self.max_slots - self.active) if self.ready else 0


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

    @property
    def accepts_leases(self) -> bool:
        return self.state is WorkerState.READY


@dataclass(frozen=True)
class Lease:
    """A slot on one worker for one request."""

    lease_id: str
    request_id: str
    worker_id: str
    worker_address: str
    gpu_id: str
    model_id: str
    granted_at: float  # clock seconds
