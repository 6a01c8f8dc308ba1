"""Validation of GenerateRequest fields, with precise messages. Pure: no I/O."""

from __future__ import annotations

import math
import uuid

from inference.v1 import types_pb2

from services.common.errors import InvalidArgument

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
MAX_REQUEST_ID_CHARS = 128
MAX_TOP_K = 1000
_PRIORITIES = set(types_pb2.Priority.values())


def check_shape(request: types_pb2.GenerateRequest, max_prompt_chars: int) -> None:
    """Checks what needs no model knowledge. Raises InvalidArgument."""
    if not request.model_id:
        raise InvalidArgument("model_id is required")
    if not request.prompt.strip():
        raise InvalidArgument("prompt must not be empty")
    if len(request.prompt) > max_prompt_chars:
        raise InvalidArgument(
            f"prompt too long: {len(request.prompt)} characters (limit {max_prompt_chars})"
        )
    if request.priority not in _PRIORITIES:
        raise InvalidArgument(f"priority {request.priority} is not a valid Priority")
    rid = request.request_id
    if len(rid) > MAX_REQUEST_ID_CHARS or not rid.isprintable():
        raise InvalidArgument(f"request_id must be printable, at most {MAX_REQUEST_ID_CHARS} chars")
    _check_sampling(request.sampling)


def check_against_model(request: types_pb2.GenerateRequest, model: types_pb2.ModelInfo) -> None:
    if request.max_tokens > model.max_output_tokens:
        raise InvalidArgument(
            f"max_tokens {request.max_tokens} exceeds the limit of {model.model_id} "
            f"({model.max_output_tokens})"
        )


def normalized(request: types_pb2.GenerateRequest) -> types_pb2.GenerateRequest:
    """A copy with request_id assigned and priority made explicit."""
    out = types_pb2.GenerateRequest()
    out.CopyFrom(request)
    if not out.request_id:
        out.request_id = uuid.uuid4().hex
    if out.priority == types_pb2.PRIORITY_UNSPECIFIED:
        out.priority = types_pb2.PRIORITY_MEDIUM
    return out


def _check_sampling(s: types_pb2.SamplingParams) -> None:
    if s.HasField("temperature") and not (math.isfinite(s.temperature) and 0 <= s.temperature <= 2):
        raise InvalidArgument(f"sampling.temperature must be in [0, 2], got {s.temperature}")
    if s.HasField("top_p") and not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
        raise InvalidArgument(f"sampling.top_p must be in (0, 1], got {s.top_p}")
    if s.top_k > MAX_TOP_K:
        raise InvalidArgument(f"sampling.top_k must be at most {MAX_TOP_K}, got {s.top_k}")
    if len(s.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"at most {MAX_STOP_STRINGS} stop strings, got {len(s.stop)}")
    for stop in s.stop:
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidArgument(f"stop strings must have 1 to {MAX_STOP_CHARS} characters")
