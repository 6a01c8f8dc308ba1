"""OpenAI API request and response shapes ↔ inference.v1 messages. Pure: no I/O."""

from __future__ import annotations

import time
from typing import Any

from inference.v1 import router_pb2, types_pb2

from services.common.errors import InvalidArgument
from services.router.json_fields import (
    UINT32_MAX,
    UINT64_MAX,
    flag,
    integer,
    priority,
    real,
    text,
    texts,
)

_FINISH = {types_pb2.FINISH_REASON_STOP: "stop", types_pb2.FINISH_REASON_LENGTH: "length"}


def generate_request(body: dict[str, Any], prompt: str) -> types_pb2.GenerateRequest:
    """The GenerateRequest of a completions or chat body. Fields this server cannot honour
    are refused (400), not ignored."""
    refuse_unsupported(body)
    text(body, "user")  # accepted, and used for nothing (it is the caller's to set)
    sampling = types_pb2.SamplingParams(
        stop=texts(body, "stop"),
        ignore_eos=flag(body, "ignore_eos"),
        min_tokens=integer(body, "min_tokens", UINT32_MAX) or 0,
    )
    for name in ("temperature", "top_p"):
        if (value := real(body, name)) is not None:
            setattr(sampling, name, value)
    if (seed := integer(body, "seed", UINT64_MAX)) is not None:
        sampling.seed = seed
    max_tokens = integer(body, "max_completion_tokens", UINT32_MAX)
    if max_tokens is None:
        max_tokens = integer(body, "max_tokens", UINT32_MAX)
    return types_pb2.GenerateRequest(
        model_id=text(body, "model"),
        prompt=prompt,
        max_tokens=max_tokens or 0,
        sampling=sampling,
        priority=priority(body),
    )


def refuse_unsupported(body: dict[str, Any]) -> None:
    """What this server cannot honour is refused (400), never silently ignored."""
    if integer(body, "n", UINT32_MAX) not in (None, 1):
        raise InvalidArgument("n must be 1: one choice per request is supported")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs"):
        raise InvalidArgument("logprobs are not supported")
    for name in ("tools", "functions"):
        if body.get(name):
            raise InvalidArgument(f"{name} are not supported: no model here calls tools")
    if body.get("tool_choice") not in (None, "none") or body.get("function_call"):
        raise InvalidArgument("tool_choice is not supported: no model here calls tools")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise InvalidArgument('response_format is not supported (only {"type": "text"})')
    flag(body, "stream")


def stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats) of `stream_options`: usage in a final chunk,
    and running usage in every chunk."""
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidArgument("stream_options must be an object")
    return flag(options, "include_usage"), flag(options, "continuous_usage_stats")


def completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise InvalidArgument("prompt must be a string (or a list of one string)")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidArgument("prompt must be a string")
    return prompt


def chat_prompt(body: dict[str, Any]) -> str:
    """One user message is the prompt itself (the model's chat template wraps it); a longer
    conversation becomes a transcript ending with the last user message."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages must be a non-empty list")
    turns = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: text ones only
            content = "".join(_text_part(part) for part in content)
        if not isinstance(content, str):
            raise InvalidArgument("each message needs a role and text content")
        turns.append((text(message, "role", "user"), content))
    if len(turns) == 1:
        return turns[0][1]
    return "\n".join(f"{role.capitalize()}: {text}" for role, text in turns)


def _text_part(part: object) -> str:
    if not isinstance(part, dict) or part.get("type", "text") != "text":
        raise InvalidArgument("content parts must be text parts: other kinds are not supported")
    value = part.get("text")
    if not isinstance(value, str):
        raise InvalidArgument("a text content part needs a string text")
    return value


def embed_request(body: dict[str, Any]) -> types_pb2.EmbedRequest:
    inputs = texts(body, "input")
    if not inputs:
        raise InvalidArgument("input must be a string or a non-empty list of strings")
    return types_pb2.EmbedRequest(model_id=text(body, "model"), inputs=inputs)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; `cached_tokens`: prompt tokens the prefix cache held."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion(answer: router_pb2.InferResponse, chat: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": _FINISH.get(answer.finish_reason)}
    if chat:
        choice["message"] = {"role": "assistant", "content": answer.generated_text}
    else:
        choice.update(text=answer.generated_text, logprobs=None)
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + answer.request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": answer.model_id,
        "choices": [choice],
        "usage": usage(answer.prompt_tokens, answer.completion_tokens, answer.cached_prompt_tokens),
    }


def usage_chunk(summary: types_pb2.GenerationSummary, request_id: str, model: str, chat: bool):
    """The last chunk when the client asked for usage: no choices, the request's usage."""
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(
            summary.prompt_tokens, summary.completion_tokens, summary.cached_prompt_tokens
        ),
    }


def chunk(message: types_pb2.GenerateResponse, model: str, chat: bool, first: bool) -> dict:
    """A stream chunk for a delta, or the final chunk (with finish_reason) for the summary."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": None}
    if message.HasField("summary"):
        choice["finish_reason"] = _FINISH.get(message.summary.finish_reason)
        text = ""
    else:
        text = message.delta.text
    if chat:
        choice["delta"] = ({"role": "assistant"} if first else {}) | (
            {"content": text} if text or not message.HasField("summary") else {}
        )
    else:
        choice.update(text=text, logprobs=None)
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + message.request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


def embeddings(answer: types_pb2.EmbedResponse) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": list(e.values)}
            for i, e in enumerate(answer.embeddings)
        ],
        "model": answer.model_id,
        "usage": {"prompt_tokens": answer.prompt_tokens, "total_tokens": answer.prompt_tokens},
    }


def models(listed: types_pb2.ListModelsResponse) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": m.model_id, "object": "model", "created": 0, "owned_by": "inference-serving"}
            for m in listed.models
        ],
    }
