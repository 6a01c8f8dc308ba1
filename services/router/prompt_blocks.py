"""The router names a prompt's KV blocks, so the scheduler can send it where they are cached.

For each generative model with a tokenizer on this host (its package, or the converted copy
the first worker to load it leaves in the model cache), the prompt is tokenized exactly as the
worker will (services.common.prompt_encoding) and its block-hash chain goes in the ticket, with
the real prompt length in place of the estimate. A tokenizer loads in a thread the first time
its model is asked for; until it is ready (or where there is none: a router without the
model's files) the ticket carries no blocks and placement weighs load alone. A simulated
model's "tokens" need no tokenizer (`prompt_encoding.simulated_token_ids`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from inference.v1 import scheduler_pb2, types_pb2

from services.common.catalog import ModelSpec
from services.common.prefix_blocks import block_hashes
from services.common.prompt_encoding import (
    encode_request,
    simulated_token_ids,
    tokenizer_folder,
)

log = logging.getLogger(__name__)

RETRY_LOAD_S = 10.0  # a tokenizer not on disk yet (no worker converted it) is looked for again
TOKENIZED_ENGINES = ("transformers", "vllm")  # engines whose blocks are of tokenizer ids

Encoder = Callable[[str, str], list[int]]  # (prompt, resumed text) → token ids


class PromptBlocks:
    def __init__(self, catalog: Mapping[str, ModelSpec], cache_dir: Path) -> None:
        self._specs = {m: s for m, s in catalog.items() if s.engine in TOKENIZED_ENGINES}
        self._cache_dir = cache_dir
        self._encoders: dict[str, Encoder] = {
            m: _simulated for m, s in catalog.items() if s.simulated
        }
        self._tried_at: dict[str, float] = {}  # model → when its tokenizer was last looked for
        for model_id in list(self._specs):  # loaded in the background from the start
            self._encoder(model_id)

    def describe(self, ticket: scheduler_pb2.AcquireRequest, request: types_pb2.GenerateRequest):
        """Puts the prompt's block chain and real length in the ticket, where it can."""
        encode = self._encoder(request.model_id)
        if encode is None:
            return
        try:
            ids = encode(request.prompt, request.resume.generated_text)
        except Exception:
            log.debug("could not tokenize a prompt for %s", request.model_id, exc_info=True)
            return
        if not request.resume.generated_text:  # (a resumed one's text counts in max_tokens)
            ticket.prompt_tokens = len(ids)
        ticket.prefix_blocks.extend(block_hashes(ids))

    def _encoder(self, model_id: str) -> Encoder | None:
        encode = self._encoders.get(model_id)
        spec = self._specs.get(model_id)
        if encode is not None or spec is None:
            return encode
        now = time.monotonic()
        if now - self._tried_at.get(model_id, -RETRY_LOAD_S) >= RETRY_LOAD_S:
            self._tried_at[model_id] = now
            threading.Thread(target=self._load, args=(spec,), daemon=True, name="tokenizer").start()
        return None

    def _load(self, spec: ModelSpec) -> None:
        try:
            folder = tokenizer_folder(spec, self._cache_dir)
            if folder is None:
                return  # not converted yet: looked for again on a later request
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as exc:  # noqa: BLE001 - no blocks for this model; it still runs
            self._specs.pop(spec.model_id, None)  # not looked for again
            log.warning("no tokenizer for %s (%r): placed by load alone", spec.model_id, exc)
            return
        template = spec.chat_template
        self._encoders[spec.model_id] = lambda prompt, resumed: encode_request(
            tokenizer, prompt, resumed, template
        )
        log.info("tokenizing %s's prompts for kv_aware placement", spec.model_id)


def _simulated(prompt: str, resumed: str) -> list[int]:
    return simulated_token_ids(prompt + resumed)
