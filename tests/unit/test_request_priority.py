"""A request's class over HTTP: our names, or vLLM's integer priority (lower runs first)."""

import pytest
from inference.v1 import types_pb2

from services.common.errors import InvalidArgument
from services.router import openai_format
from services.router.json_fields import priority


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, types_pb2.PRIORITY_MEDIUM),
        ("high", types_pb2.PRIORITY_HIGH),
        ("LOW", types_pb2.PRIORITY_LOW),
        (-5, types_pb2.PRIORITY_HIGH),  # vLLM: lower runs first, 0 the default
        (0, types_pb2.PRIORITY_MEDIUM),
        (10, types_pb2.PRIORITY_LOW),
        (-(2**63), types_pb2.PRIORITY_HIGH),
    ],
)
def test_names_and_vllm_integers_map_to_our_classes(value, expected):
    assert priority({"priority": value}) == expected


@pytest.mark.parametrize("value", ["urgent", "", True, 1.5, 2**63, [1], {"a": 1}, "高"])
def test_anything_else_is_invalid_argument(value):
    with pytest.raises(InvalidArgument, match="priority"):
        priority({"priority": value})


def test_an_openai_body_carries_its_priority():
    body = {"model": "m", "priority": -1}
    assert openai_format.generate_request(body, "hi").priority == types_pb2.PRIORITY_HIGH
