"""Validation of request fields, with precise messages. Pure: no I/O.

Sizes are checked before anything costs: a prompt's characters against the router's cap and
the model's context (no token is longer than MAX_CHARS_PER_TOKEN characters, so a longer
prompt cannot fit), embedding inputs by count, each and in total. Request ids are printable
ASCII (they travel as the x-request-id header)."""

from __future__ import annotations

import math
import uuid
from typing import Any

from inference.v1 import types_pb2

from services.common.errors import InvalidArgument

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
MAX_REQUEST_ID_CHARS = 128
MAX_TOP_K = 1000
MAX_EMBED_INPUTS = 256
MAX_EMBED_TOTAL_CHARS = 256 * 1024
MAX_CHARS_PER_TOKEN = 16
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
    _check_common(request)
    _check_sampling(request.sampling)
    _check_resume(request.resume)


def check_embed_shape(request: types_pb2.EmbedRequest, max_input_chars: int) -> None:
    """Checks an EmbedRequest's fields. Raises InvalidArgument."""
    if not request.model_id:
        raise InvalidArgument("model_id is required")
    if not 0 < len(request.inputs) <= MAX_EMBED_INPUTS:
        raise InvalidArgument(f"inputs must hold 1 to {MAX_EMBED_INPUTS} texts")
    for i, text in enumerate(request.inputs):
        if not text.strip():
            raise InvalidArgument(f"inputs[{i}] must not be empty")
        if len(text) > max_input_chars:
            raise InvalidArgument(f"inputs[{i}] too long: {len(text)} characters")
    total = sum(len(text) for text in request.inputs)
    if total > MAX_EMBED_TOTAL_CHARS:
        raise InvalidArgument(
            f"inputs too long: {total} characters (limit {MAX_EMBED_TOTAL_CHARS})"
        )
    _check_common(request)


def check_embed_against_model(request: types_pb2.EmbedRequest, model: types_pb2.ModelInfo) -> None:
    check_kind(model, types_pb2.MODEL_KIND_EMBEDDING)
    limit = model.max_context_tokens * MAX_CHARS_PER_TOKEN
    for i, text in enumerate(request.inputs):
        if len(text) > limit:
            raise InvalidArgument(
                f"inputs[{i}] too long for {model.model_id}: {len(text)} characters "
                f"(its context is {model.max_context_tokens} tokens)"
            )


def check_kind(model: types_pb2.ModelInfo, kind: int) -> None:
    """A generative model for Generate/Infer, an embedding model for Embed."""
    if model.kind != kind:
        use = "Embed" if model.kind == types_pb2.MODEL_KIND_EMBEDDING else "Generate or Infer"
        raise InvalidArgument(f"model {model.model_id!r} is served by {use}")


def check_against_model(request: types_pb2.GenerateRequest, model: types_pb2.ModelInfo) -> None:
    check_kind(model, types_pb2.MODEL_KIND_GENERATIVE)
    limit = model.max_context_tokens * MAX_CHARS_PER_TOKEN
    if len(request.prompt) > limit:
        raise InvalidArgument(
            f"prompt too long for {model.model_id}: {len(request.prompt)} characters "
            f"(its context is {model.max_context_tokens} tokens)"
        )
    budget = request.max_tokens or model.default_max_tokens
    if request.sampling.min_tokens > budget:
        raise InvalidArgument(
            f"sampling.min_tokens {request.sampling.min_tokens} exceeds max_tokens ({budget})"
        )
    if request.resume.generated_tokens and request.resume.generated_tokens >= budget:
        raise InvalidArgument(
            f"resume.generated_tokens {request.resume.generated_tokens} leaves nothing to "
            f"generate (max_tokens {budget})"
        )
    if request.max_tokens > model.max_output_tokens:
        raise InvalidArgument(
            f"max_tokens {request.max_tokens} exceeds the limit of {model.model_id} "
            f"({model.max_output_tokens})"
        )


def normalized(request: Any) -> Any:
    """A copy (of a GenerateRequest or EmbedRequest) with request_id assigned and priority
    made explicit."""
    out = type(request)()
    out.CopyFrom(request)
    if not out.request_id:
        out.request_id = uuid.uuid4().hex
    if out.priority == types_pb2.PRIORITY_UNSPECIFIED:
        out.priority = types_pb2.PRIORITY_MEDIUM
    return out


def _check_common(request: Any) -> None:
    if request.priority not in _PRIORITIES:
        raise InvalidArgument(f"priority {request.priority} is not a valid Priority")
    rid = request.request_id
    if len(rid) > MAX_REQUEST_ID_CHARS or not all(" " <= c <= "~" for c in rid):
        raise InvalidArgument(
            f"request_id must be printable ASCII, at most {MAX_REQUEST_ID_CHARS} characters"
        )


def _check_resume(resume: types_pb2.ResumeState) -> None:
    """What a client received before its stream stopped: text its tokens can hold."""
    limit = resume.generated_tokens * MAX_CHARS_PER_TOKEN
    if len(resume.generated_text) > limit:
        raise InvalidArgument(
            f"resume.generated_text has {len(resume.generated_text)} characters, more than "
            f"{resume.generated_tokens} tokens can hold ({MAX_CHARS_PER_TOKEN} each)"
        )


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
