"""Fixtures of the service tests: real servers in this process, on ports bound at 0."""

import pytest

from tests.stack import sim_model, start_stack

SLOW = sim_model("sim-slow", slots=1, step_ms=20.0)  # one slot, 20 ms a token


@pytest.fixture
async def one_slot():
    """A stack whose one worker has one slot for "sim-slow", and a queue of 3."""
    stack = await start_stack([SLOW], queue_capacity=3)
    yield stack
    await stack.close()
