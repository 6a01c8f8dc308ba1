"""A leased request for a model its worker no longer holds (unloaded after the grant, before
the scheduler heard) is the worker's state, not the request's: UNAVAILABLE, so the router
moves it to another worker, never NOT_FOUND ("unknown model") to the client (finding 4)."""

from pathlib import Path

import pytest

from services.common.errors import Unavailable
from services.gpu_worker.host import ModelHost
from tests.stack import sim_model


async def test_a_model_unloaded_after_the_grant_is_unavailable_here_not_unknown():
    spec = sim_model()
    host = ModelHost({spec.model_id: spec}, [spec.model_id], Path("/tmp"), "cpu")
    await host.load_all()
    assert host.generative(spec.model_id) is not None
    host.unload(spec.model_id)
    with pytest.raises(Unavailable, match="not on this worker"):
        host.generative(spec.model_id)
