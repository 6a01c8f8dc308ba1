"""Typed reads of JSON request fields for the HTTP door: a field of the wrong type or out of
the range its protobuf field can hold is INVALID_ARGUMENT (HTTP 400) with the field's name,
never an exception deeper down (HTTP 500). Range checks that depend on the model are the
router's, as for gRPC callers. Pure: no I/O."""

from __future__ import annotations

import math
from typing import Any

from inference.v1 import types_pb2

from services.common.errors import InvalidArgument

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1
PRIORITIES = {
    "high": types_pb2.PRIORITY_HIGH,
    "medium": types_pb2.PRIORITY_MEDIUM,
    "low": types_pb2.PRIORITY_LOW,
}


def text(body: dict[str, Any], name: str, default: str = "") -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string")
    return value


def integer(body: dict[str, Any], name: str, high: int, low: int = 0) -> int | None:
    """An integer field in [low, high]; None when absent or null."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer")
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be between {low} and {high}, got {value}")
    return value


def real(body: dict[str, Any], name: str) -> float | None:
    """A finite number; None when absent or null."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number")
    if not math.isfinite(value) or abs(value) > 3.4e38:
        raise InvalidArgument(f"{name} must be a finite number")
    return float(value)


def texts(body: dict[str, Any], name: str) -> list[str]:
    """A string, or a list of strings, as a list; [] when absent or null."""
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{name} must be a string or a list of strings")
    return value


def flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be true or false")
    return value


def priority(body: dict[str, Any], name: str = "priority") -> int:
    """A request's class: "high", "medium" (the default) or "low"; or, as vLLM's server takes
    it, an integer where lower runs first: below 0 is high, 0 medium, above 0 low."""
    value = body.get(name)
    if value is None:
        return types_pb2.PRIORITY_MEDIUM
    if isinstance(value, str):
        if value.lower() not in PRIORITIES:
            raise InvalidArgument(f"{name} must be high, medium or low (or an integer)")
        return PRIORITIES[value.lower()]
    rank = integer(body, name, INT64_MAX, -INT64_MAX - 1)
    if rank is None or rank == 0:
        return types_pb2.PRIORITY_MEDIUM
    return types_pb2.PRIORITY_HIGH if rank < 0 else types_pb2.PRIORITY_LOW
