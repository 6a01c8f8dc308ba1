"""What the router asks the schedulers about, reused for a short while: the model list (while
a pool's scheduler cannot be reached, the last list it gave is used: models rarely change, and
a request for a known model waits for its scheduler rather than failing at the door; an
unknown id costs no scheduler call while the list is fresh), and the status views. With
several pools (router.pools) both are merged from every pool's scheduler."""

from __future__ import annotations

import asyncio
import time

from inference.v1 import types_pb2

from services.common.errors import NotFound, Unavailable
from services.router.pools import Pools, merge_status
from services.router.scheduler_client import RETRY_AFTER_MS

MAX_VIEWS = 4096  # status views kept (one per tenant that asked)


class ModelDirectory:
    def __init__(self, pools: Pools, refresh_s: float) -> None:
        self._pools = pools
        self._refresh_s = refresh_s
        self._lists: dict[str, dict[str, types_pb2.ModelInfo]] = {}  # pool → its models
        self._models: dict[str, types_pb2.ModelInfo] = {}  # every pool's, merged
        self._fetched_at = float("-inf")
        self._refreshing: asyncio.Future | None = None  # the one refresh in flight

    async def get(self, model_id: str) -> types_pb2.ModelInfo:
        """The model's info. Raises NotFound, or Unavailable when its pool's scheduler is
        down and never gave a list."""
        if self._stale():  # an unknown id costs no scheduler call while the list is fresh
            await self._refresh_quietly()
        model = self._models.get(model_id)
        if model is not None:
            return model
        pool = self._pools.pool_of(model_id)
        if pool not in self._lists and (self._pools.configured(model_id) or not self._lists):
            where = f"pool {pool!r}" if pool else "the scheduler"
            raise Unavailable(f"{where} has not answered yet; retry later", RETRY_AFTER_MS)
        raise NotFound(f"unknown model {model_id!r}; ListModels shows the served models")

    def known(self, model_id: str) -> bool:
        """Whether the last fetched list has the model (no refresh; for metric labels)."""
        return model_id in self._models

    async def list(self) -> types_pb2.ListModelsResponse:
        if self._stale():
            await self._refresh_quietly()
        return types_pb2.ListModelsResponse(models=list(self._models.values()))

    async def refresh(self) -> None:
        """Asks every pool's scheduler; a pool that does not answer keeps its last list.
        Raises Unavailable when no pool answered and none ever did."""
        answers = await self._pools.ask_all("ListModels", types_pb2.ListModelsRequest())
        failure = None
        for pool, answer in answers.items():
            if isinstance(answer, Unavailable):
                failure = answer
            else:
                self._lists[pool] = {m.model_id: m for m in answer.models}
        self._models = {m: info for models in self._lists.values() for m, info in models.items()}
        if failure is not None and not self._lists:
            raise failure
        self._fetched_at = time.monotonic()

    async def _refresh_quietly(self) -> None:
        """One refresh at a time: the requests that find the list stale together wait for
        the same one (its caller's cancellation does not cancel it for the others)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh())
            self._refreshing.add_done_callback(_retrieved)
        try:
            await asyncio.shield(self._refreshing)
        except Unavailable:
            if not self._models:
                raise

    def _stale(self) -> bool:
        return time.monotonic() - self._fetched_at > self._refresh_s


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # whoever waited has it; unretrieved, asyncio would log it


class StatusViews:
    """GetStatus answers, per view (a tenant's own, or "" for the fleet), merged from every
    pool that answers, reused `ttl_s`."""

    def __init__(self, pools: Pools, ttl_s: float) -> None:
        self._pools = pools
        self._ttl_s = ttl_s
        self._views: dict[str, tuple[float, types_pb2.GetStatusResponse]] = {}

    async def get(self, tenant_id: str) -> types_pb2.GetStatusResponse:
        cached = self._views.get(tenant_id)
        if cached is not None and time.monotonic() - cached[0] <= self._ttl_s:
            return cached[1]
        answers = await self._pools.ask_all(
            "GetStatus", types_pb2.GetStatusRequest(tenant_id=tenant_id)
        )
        views = [a for a in answers.values() if not isinstance(a, Unavailable)]
        if not views:
            raise next(iter(answers.values()))
        answer = views[0] if len(answers) == 1 else merge_status(views)
        if len(self._views) > MAX_VIEWS:
            self._views.clear()
        self._views[tenant_id] = (time.monotonic(), answer)
        return answer
