"""What every engine checks before work joins its batch: the request fits the model's
context, and the waiting requests join in order while the batch has room."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TypeVar

from services.common.errors import InvalidArgument

T = TypeVar("T")


def context_error(
    model_id: str, prompt_tokens: int, max_tokens: int, limit: int
) -> InvalidArgument | None:
    """The error of a sequence whose prompt plus max_tokens passes the context; else None."""
    if prompt_tokens + max_tokens <= limit:
        return None
    return InvalidArgument(
        f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the context "
        f"of {model_id} ({limit} tokens)"
    )


def input_error(model_id: str, tokens: int, limit: int) -> InvalidArgument | None:
    """The error of an embedding input longer than the model's context; else None."""
    if tokens <= limit:
        return None
    return InvalidArgument(f"an input has {tokens} tokens; {model_id} takes at most {limit}")


def _never(_: object) -> bool:
    return False


def admit_in_order(
    waiting: deque[T],
    room: float,
    running: int,
    size: Callable[[T], int],
    max_running: int | None = None,
    cancelled: Callable[[T], bool] = _never,
) -> list[T]:
    """Takes waiting requests off the front, in order, while they fit: `size` of each within
    `room` (KV tokens, inputs) and at most `max_running` beside the `running` ones. A lone
    request always runs (the context bounds it); cancelled ones are dropped on the way."""
    joining: list[T] = []
    while waiting and (max_running is None or running + len(joining) < max_running):
        head = waiting[0]
        if cancelled(head):
            waiting.popleft()
            continue
        if size(head) > room and (running or joining):
            break  # wait for room
        waiting.popleft()
        room -= size(head)
        joining.append(head)
    return joining
