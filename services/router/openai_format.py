"""OpenAI API request and response shapes ↔ inference.v1 messages. Pure: no I/O."""

from __future__ import annotations

import time
from typing import Any

from inference.v1 import router_pb2, types_pb2

from services.common.errors import InvalidArgument

_FINISH = {types_pb2.FINISH_REASON_STOP: "stop", types_pb2.FINISH_REASON_LENGTH: "length"}


def number(body: dict[str, Any], name: str, kind: type = int, default: Any = 0) -> Any:
    """A numeric field of a JSON body; InvalidArgument if it is not a number."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number, got {value!r}")
    return kind(value)


def generate_request(body: dict[str, Any], prompt: str) -> types_pb2.GenerateRequest:
    sampling = types_pb2.SamplingParams()
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            setattr(sampling, name, number(body, name, float))
    if body.get("seed") is not None:
        sampling.seed = number(body, "seed")
    stop = body.get("stop")
    sampling.stop.extend([stop] if isinstance(stop, str) else list(stop or []))
    max_tokens = number(body, "max_completion_tokens") or number(body, "max_tokens")
    return types_pb2.GenerateRequest(
        model_id=str(body.get("model", "")),
        prompt=prompt,
        max_tokens=max_tokens,
        sampling=sampling,
    )


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
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise InvalidArgument("each message needs a role and text content")
        turns.append((str(message.get("role", "user")), content))
    if len(turns) == 1:
        return turns[0][1]
    return "\n".join(f"{role.capitalize()}: {text}" for role, text in turns)


def embed_request(body: dict[str, Any]) -> types_pb2.EmbedRequest:
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise InvalidArgument("input must be a string or a list of strings")
    return types_pb2.EmbedRequest(model_id=str(body.get("model", "")), inputs=inputs)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
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
        "usage": usage(answer.prompt_tokens, answer.completion_tokens),
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
