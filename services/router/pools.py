"""Pools of schedulers: each scheduler owns the workers of one pool, and the router sends each
model's requests to its pool's scheduler (`[[models]] pool`, `[router.pools]`).

A pool whose scheduler is down fails only its own models (UNAVAILABLE with a retry hint,
once `scheduler_wait_s` has passed); the other pools serve on. `ListModels` and `GetStatus`
merge what every pool's scheduler answers; a pool that does not answer keeps the model list
it last gave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

from services.common.errors import Unavailable
from services.router.scheduler_client import RETRY_AFTER_MS, SchedulerClient

SCHEDULER_CALL_S = 5.0  # longest wait for a ListModels or GetStatus answer


def pool_down(pool: str, exc: grpc.aio.AioRpcError) -> Unavailable:
    name = f"the scheduler of pool {pool!r}" if pool else "the scheduler"
    return Unavailable(f"{name} is unavailable ({exc.code().name}); retry later", RETRY_AFTER_MS)


class Pools:
    """The scheduler client of each pool ("" is the default pool) and each model's pool."""

    def __init__(self, clients: Mapping[str, SchedulerClient], model_pools: Mapping[str, str]):
        self.clients = dict(clients)
        self._model_pools = dict(model_pools)

    def pool_of(self, model_id: str) -> str:
        """The model's pool; a model no entry names is the default pool's (or unknown)."""
        return self._model_pools.get(model_id, "")

    def configured(self, model_id: str) -> bool:
        """Whether the config puts the model in a pool other than the default one."""
        return model_id in self._model_pools

    async def acquire(
        self, ticket: scheduler_pb2.AcquireRequest, timeout_s: float
    ) -> scheduler_pb2.LeaseGrant:
        """Scheduler.Acquire at the scheduler of the ticket's model's pool."""
        return await self.clients[self.pool_of(ticket.model_id)].acquire(ticket, timeout_s)

    async def ask_all(self, method: str, request) -> dict[str, object]:
        """Calls `method` on every pool's scheduler at once: pool → answer, or the
        Unavailable its failure means."""
        pools = list(self.clients)
        answers = await asyncio.gather(
            *(self._ask(pool, method, request) for pool in pools), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, Unavailable):
                raise answer
        return dict(zip(pools, answers, strict=True))

    async def _ask(self, pool: str, method: str, request):
        stub: scheduler_pb2_grpc.SchedulerStub = self.clients[pool].stub
        try:
            return await getattr(stub, method)(request, timeout=SCHEDULER_CALL_S)
        except grpc.aio.AioRpcError as exc:
            raise pool_down(pool, exc) from None


def merge_status(answers: list[types_pb2.GetStatusResponse]) -> types_pb2.GetStatusResponse:
    """One fleet view from the pools' views: queues and leases summed, the rest listed."""
    depths: dict[int, int] = {}
    merged = types_pb2.GetStatusResponse()
    for answer in answers:
        for queue in answer.queues:
            depths[queue.priority] = depths.get(queue.priority, 0) + queue.depth
        merged.workers.extend(answer.workers)
        merged.active_leases += answer.active_leases
        merged.total_slots += answer.total_slots
        merged.scaling.extend(answer.scaling)
        merged.models.extend(answer.models)
    merged.queues.extend(
        types_pb2.QueueDepth(priority=p, depth=d) for p, d in sorted(depths.items())
    )
    return merged
