"""Sentence embeddings (e.g. all-MiniLM-L6-v2) run by vLLM's pooling runner, behind our
embedding interface (vLLM's process, loop, cancellation and health: vllm_lifecycle.py).

vLLM reads the model's sentence-transformers files (its pooling and normalization) and
embeds each text as a request of its own, batching them with whatever else it runs; the
texts of one of our requests go in together and come back in order. Inputs are tokenized
here, with the model's own tokenizer, so that one longer than the model's context is
refused with INVALID_ARGUMENT before vLLM sees it, as the transformers engine refuses it.
"""

from __future__ import annotations

import asyncio

from services.gpu_worker.engines.admission import input_error
from services.gpu_worker.engines.base import Embeddings, Sink
from services.gpu_worker.engines.vllm_lifecycle import VllmLifecycle, VllmSequence


class VllmEmbeddingEngine(VllmLifecycle):
    """An `EmbeddingEngine` (engines.base) on vLLM."""

    RUNNER = "pooling"
    KEEPS_KV = False

    def embed(self, texts: list[str], sink: Sink) -> VllmSequence:
        """Must be called on the worker's event loop (vLLM's client runs on it)."""
        texts = list(texts)
        return self._start(lambda number: self._embed(texts, number), sink)

    async def _embed(self, texts: list[str], number: int) -> Embeddings:
        """Every text as one vLLM request, all at once; the first failure cancels the rest
        (each aborted inside vLLM)."""
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        if not texts:
            return Embeddings([], 0)
        ids = self._tokenizer(texts)["input_ids"]
        error = input_error(
            self.spec.model_id, max(len(i) for i in ids), self.spec.max_context_tokens
        )
        if error is not None:
            raise error
        params = PoolingParams(task="embed")
        tasks = [
            asyncio.ensure_future(
                self._one(TokensPrompt(prompt_token_ids=i), params, f"embed-{number}-{k}")
            )
            for k, i in enumerate(ids)
        ]
        try:
            vectors = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # after a failure, the rest leave vLLM
        self._produced.add(len(texts))
        return Embeddings(list(vectors), sum(len(i) for i in ids))

    async def _one(self, prompt: object, params: object, request_id: str) -> list[float]:
        final = None
        async for output in self._llm.encode(prompt, params, request_id):
            final = output
        if final is None:
            raise RuntimeError(f"vLLM returned no embedding for {request_id}")
        return final.outputs.data.tolist()
