"""Text helpers shared by engines: incremental detokenization and stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas whose concatenation equals
    decoding all ids at once.

    Decodes a short window (from `prefix_offset`) so the cost per token stays constant, and
    holds text back while it ends in an incomplete UTF-8 sequence (U+FFFD), the approach of
    TGI and vLLM.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) > len(prefix) and not text.endswith(REPLACEMENT_CHAR):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Text still held back (an incomplete character at the very end)."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix) :] if len(text) > len(prefix) else ""

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return self._tokenizer.decode(ids, skip_special_tokens=True)


class StopMatcher:
    """Cuts generated text before the first stop string.

    `push` returns (text safe to emit, stopped). Text that might be the start of a stop string
    is held back until it is known not to be.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._buffer = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        self._buffer += text
        hits = [i for i in (self._buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._buffer = self._buffer[: min(hits)], ""
            return out, True
        keep = self._longest_stop_prefix_suffix()
        cut = len(self._buffer) - keep
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        for size in range(min(len(self._buffer), max(map(len, self._stops)) - 1), 0, -1):
            tail = self._buffer[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
