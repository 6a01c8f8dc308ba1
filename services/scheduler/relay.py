"""What a request has streamed so far, so that it can resume elsewhere without repeats.

When a lease ends early (its worker died, or it was preempted) the request goes back to the
queue; on its next lease the worker receives the text already sent as `ResumeState` and
continues after it, so the client sees one stream with no token repeated. Token counts in
the final summary cover every attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.v1 import types_pb2, worker_pb2


class LeaseLost(Exception):
    """The request's lease ended before its stream did; it may be resumed elsewhere."""

    def __init__(self, reason: str, worker_id: str) -> None:
        super().__init__(f"{reason} on {worker_id}")
        self.reason = reason
        self.worker_id = worker_id


@dataclass
class Progress:
    texts: list[str] = field(default_factory=list)  # deltas sent, joined only on a resume
    tokens: int = 0
    attempts: int = 0  # leases the request has had

    def resume_state(self) -> worker_pb2.ResumeState | None:
        if not self.tokens and not self.texts:
            return None
        return worker_pb2.ResumeState(
            generated_text="".join(self.texts), generated_tokens=self.tokens
        )

    def record(self, message: types_pb2.GenerateResponse, tokens_before: int) -> None:
        """Takes note of a message on its way to the client; completes a summary's counts."""
        if message.HasField("delta"):
            self.texts.append(message.delta.text)
            self.tokens += message.delta.token_count
        else:
            message.summary.completion_tokens += tokens_before
