"""The commands a scheduler sends a worker over its session, as a typed enum."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class WorkerCommand(enum.Enum):
    DRAIN = "drain"  # argument: the reason; take no new work, finish what runs
    LOAD_MODEL = "load_model"  # argument: the model id
    UNLOAD_MODEL = "unload_model"  # argument: the model id
    REVOKE_LEASE = "revoke_lease"  # argument: the lease id; end its stream (preempted)


@dataclass(frozen=True)
class Command:
    kind: WorkerCommand
    argument: str
