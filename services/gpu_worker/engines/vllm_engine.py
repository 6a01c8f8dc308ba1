"""A generative model run by vLLM's v1 async engine (`AsyncLLM`), behind our engine interface
(vLLM's process, loop, cancellation and health: vllm_lifecycle.py).

- Prompts are tokenized here exactly as the transformers engine does
  (`services.common.prompt_encoding.encode_request`: the chat template, then any text the
  request streamed elsewhere), and handed to vLLM as token ids, so greedy text is the same
  on both engines and a stream moves between them.
- Deltas come as vLLM makes them (`RequestOutputKind.DELTA`); the request's class goes to
  vLLM's priority scheduling (0 high, 1 medium, 2 low).
- Capacity is vLLM's: slots from its `max_num_seqs`, the KV budget from its KV cache (blocks
  × block size); a stat logger hands over its running and waiting counts, KV use and prefix
  cache figures at every step.
"""

from __future__ import annotations

from typing import Any

from services.gpu_worker.engines.admission import context_error
from services.gpu_worker.engines.base import (
    Finished,
    FinishReason,
    GenerationInput,
    Sink,
    TextDelta,
)
from services.gpu_worker.engines.vllm_lifecycle import VllmLifecycle, VllmSequence
from services.gpu_worker.engines.vllm_setup import sampling_params


class VllmEngine(VllmLifecycle):
    """A `GenerativeEngine` (engines.base) on vLLM."""

    RUNNER = "generate"

    def submit(self, request: GenerationInput, sink: Sink) -> VllmSequence:
        """Must be called on the worker's event loop (vLLM's client runs on it)."""
        return self._start(lambda number: self._stream(request, sink, number), sink)

    async def _stream(self, request: GenerationInput, sink: Sink, number: int) -> Finished:
        """Streams one request's deltas to its sink; returns its Finished event."""
        from vllm.inputs import TokensPrompt

        from services.common.prompt_encoding import encode_request

        ids = encode_request(
            self._tokenizer, request.prompt, request.resume_text, self.spec.chat_template
        )
        error = context_error(
            self.spec.model_id, len(ids), request.remaining_tokens, self.spec.max_context_tokens
        )
        if error is not None:
            raise error
        params = sampling_params(request)
        generated, prompt_tokens, reason, first = 0, len(ids), FinishReason.LENGTH, True
        cached = 0  # prompt tokens vLLM's prefix cache held
        stream = self._llm.generate(
            TokensPrompt(prompt_token_ids=ids),
            params,
            f"{request.request_id}#{number}",  # request ids are unique per tenant only
            priority=request.priority_rank,
        )
        async for output in stream:
            cached = getattr(output, "num_cached_tokens", None) or cached
            completion = output.outputs[0]
            tokens = len(completion.token_ids)
            if completion.finish_reason is not None:
                reason = _finish_reason(completion)
                tokens -= reason is FinishReason.STOP and not isinstance(
                    completion.stop_reason, str
                )  # the end-of-sequence token: not counted, as the other engines do
            if tokens or completion.text:
                announced = prompt_tokens if first else 0  # the prompt's length, once
                sink(TextDelta(completion.text, tokens, announced))
                self._produced.add(tokens)
                first = False
            generated += tokens
        return Finished(reason, prompt_tokens, generated, cached)


def _finish_reason(completion: Any) -> FinishReason:
    return FinishReason.LENGTH if completion.finish_reason == "length" else FinishReason.STOP
