"""Shared fixtures. gen/ is on the path through the venv's .pth file (make protos)."""

from __future__ import annotations

import pytest_asyncio

from tests.stack import Stack, start_stack


@pytest_asyncio.fixture
async def stack() -> Stack:
    """Router, scheduler and one worker serving the fast simulated model."""
    running = await start_stack()
    yield running
    await running.close()
