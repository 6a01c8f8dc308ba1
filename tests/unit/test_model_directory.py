"""The router's model list: a stale list is refreshed once however many requests find it
stale at the same time (review finding 12)."""

import asyncio

import pytest
from inference.v1 import types_pb2

from services.common.errors import NotFound, Unavailable
from services.router.models import ModelDirectory


class SlowPools:
    """The Pools a directory asks: one pool whose scheduler answers after a while."""

    def __init__(self, answer: object) -> None:
        self.asked = 0
        self._answer = answer

    async def ask_all(self, method: str, request: object) -> dict[str, object]:
        self.asked += 1
        await asyncio.sleep(0.05)
        return {"": self._answer}

    def pool_of(self, model_id: str) -> str:
        return ""

    def configured(self, model_id: str) -> bool:
        return False


def listing(*models: str) -> types_pb2.ListModelsResponse:
    return types_pb2.ListModelsResponse(models=[types_pb2.ModelInfo(model_id=m) for m in models])


def test_requests_that_find_the_list_stale_together_share_one_refresh():
    pools = SlowPools(listing("m"))
    directory = ModelDirectory(pools, refresh_s=5.0)

    async def run() -> list[object]:
        return await asyncio.gather(
            *(directory.get("m") for _ in range(50)),
            directory.get("other"),
            return_exceptions=True,
        )

    answers = asyncio.run(run())
    assert pools.asked == 1
    assert all(a.model_id == "m" for a in answers[:50])
    assert isinstance(answers[50], NotFound)


def test_a_scheduler_that_never_answered_is_unavailable_to_every_waiter():
    pools = SlowPools(Unavailable("scheduler down"))
    directory = ModelDirectory(pools, refresh_s=5.0)

    async def run() -> list[object]:
        return await asyncio.gather(*(directory.get("m") for _ in range(5)), return_exceptions=True)

    answers = asyncio.run(run())
    assert pools.asked == 1 and all(isinstance(a, Unavailable) for a in answers)
    with pytest.raises(Unavailable):
        asyncio.run(directory.get("m"))  # asked again: still nothing
    assert pools.asked == 2
