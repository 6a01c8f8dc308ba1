"""What the router asks the scheduler about, reused for a short while: the model list (while
the scheduler cannot be reached, the last list it gave is used: models rarely change, and a
request for a known model waits for the scheduler rather than failing at the door; an
unknown id costs no scheduler call while the list is fresh), and the status views."""

from __future__ import annotations

import time

import grpc
from inference.v1 import scheduler_pb2_grpc, types_pb2

from services.common.errors import NotFound, Unavailable

RETRY_AFTER_MS = 2000  # a scheduler that restarts is back in about this long
MAX_VIEWS = 4096  # status views kept (one per tenant that asked)


class ModelDirectory:
    def __init__(self, scheduler: scheduler_pb2_grpc.SchedulerStub, refresh_s: float) -> None:
        self._scheduler = scheduler
        self._refresh_s = refresh_s
        self._models: dict[str, types_pb2.ModelInfo] = {}
        self._fetched_at = float("-inf")

    async def get(self, model_id: str) -> types_pb2.ModelInfo:
        """The model's info. Raises NotFound, or Unavailable when the scheduler is down and
        no list was ever fetched."""
        if self._stale():  # an unknown id costs no scheduler call while the list is fresh
            try:
                await self.refresh()
            except Unavailable:
                if not self._models:
                    raise
        model = self._models.get(model_id)
        if model is None:
            raise NotFound(f"unknown model {model_id!r}; ListModels shows the served models")
        return model

    def known(self, model_id: str) -> bool:
        """Whether the last fetched list has the model (no refresh; for metric labels)."""
        return model_id in self._models

    async def list(self) -> types_pb2.ListModelsResponse:
        if self._stale():
            try:
                await self.refresh()
            except Unavailable:
                if not self._models:
                    raise
        return types_pb2.ListModelsResponse(models=list(self._models.values()))

    async def refresh(self) -> None:
        try:
            response = await self._scheduler.ListModels(types_pb2.ListModelsRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"scheduler unavailable ({exc.code().name}); retry later", RETRY_AFTER_MS
            ) from None
        self._models = {m.model_id: m for m in response.models}
        self._fetched_at = time.monotonic()

    def _stale(self) -> bool:
        return time.monotonic() - self._fetched_at > self._refresh_s


class StatusViews:
    """GetStatus answers, per view (a tenant's own, or "" for the fleet), reused `ttl_s`."""

    def __init__(self, scheduler: scheduler_pb2_grpc.SchedulerStub, ttl_s: float) -> None:
        self._scheduler = scheduler
        self._ttl_s = ttl_s
        self._views: dict[str, tuple[float, types_pb2.GetStatusResponse]] = {}

    async def get(self, tenant_id: str) -> types_pb2.GetStatusResponse:
        cached = self._views.get(tenant_id)
        if cached is not None and time.monotonic() - cached[0] <= self._ttl_s:
            return cached[1]
        try:
            answer = await self._scheduler.GetStatus(
                types_pb2.GetStatusRequest(tenant_id=tenant_id), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"scheduler unavailable ({exc.code().name}); retry later", RETRY_AFTER_MS
            ) from None
        if len(self._views) > MAX_VIEWS:
            self._views.clear()
        self._views[tenant_id] = (time.monotonic(), answer)
        return answer
