"""A small synchronous client over the generated stubs, across one or several routers.

with InferenceClient("localhost:50051") as client:
    for text in client.stream("smollm2-135m", "Hello", priority="high"):
        print(text, end="")

Given several routers (`InferenceClient(["r1:50051", "r2:50051"])` or "r1:50051,r2:50051"),
a call whose router is unreachable or dies under it moves to the next one (when every one
failed, it pauses and goes round again, a few times). A stream continues
where it stopped: the request goes again with what was received (`GenerateRequest.resume`),
so the caller sees one stream with no token repeated. Only failures no router answered move
(a connection refused or cut, a router killed); a status a router answered is the caller's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
from inference.v1 import router_pb2, router_pb2_grpc, types_pb2

PRIORITIES = {
    "high": types_pb2.PRIORITY_HIGH,
    "medium": types_pb2.PRIORITY_MEDIUM,
    "low": types_pb2.PRIORITY_LOW,
}
ORIGIN_KEY = "inference-status"  # a service of ours answered this status
MOVABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
# every router lost in a row: pause 0.25, 0.5, 1, 2, 2 s between rounds (their supervisors
# restart them), then give up
FIRST_PAUSE_S, MAX_PAUSE_S, ROUNDS = 0.25, 2.0, 5
T = TypeVar("T")


class RouterLost(Exception):
    """The router's stream ended without its summary."""


class InferenceClient:
    def __init__(
        self,
        address: str | Sequence[str],
        api_key: str | None = None,
        timeout_s: float = 120.0,
        tls: bool = False,
        ca_file: str | None = None,
    ):
        """`address`: a router, several (a list, or comma-separated), tried in turn.
        `tls`: connect over TLS, trusting `ca_file` (PEM) or the system's roots."""
        addresses = address.split(",") if isinstance(address, str) else list(address)
        self.addresses = [a.strip() for a in addresses if a.strip()]
        if not self.addresses:
            raise ValueError("no router address")
        credentials = None
        if tls or ca_file:
            ca = Path(ca_file).read_bytes() if ca_file else None
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        self._channels = [
            grpc.secure_channel(a, credentials) if credentials else grpc.insecure_channel(a)
            for a in self.addresses
        ]
        self._stubs = [router_pb2_grpc.RouterStub(c) for c in self._channels]
        self._current = 0  # the router calls go to until it fails
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout_s = timeout_s
        self.moves = 0  # calls sent again after their router was lost

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def request(
        self,
        model_id: str,
        prompt: str,
        priority: str = "medium",
        max_tokens: int = 0,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> types_pb2.GenerateRequest:
        sampling = types_pb2.SamplingParams(stop=stop or [])
        if temperature is not None:
            sampling.temperature = temperature
        if top_p is not None:
            sampling.top_p = top_p
        if seed is not None:
            sampling.seed = seed
        return types_pb2.GenerateRequest(
            model_id=model_id,
            prompt=prompt,
            priority=PRIORITIES[priority],
            max_tokens=max_tokens,
            sampling=sampling,
        )

    def generate(self, request: types_pb2.GenerateRequest) -> Iterator[types_pb2.GenerateResponse]:
        """The raw stream: deltas, then one summary, continued on another router if its
        router dies (the summary then counts every token, and the prompt as first sent)."""
        req = types_pb2.GenerateRequest()
        req.CopyFrom(request)
        req.request_id = req.request_id or uuid.uuid4().hex  # the same id on every router
        deadline = time.monotonic() + self._timeout_s
        texts = [req.resume.generated_text] if req.resume.generated_text else []
        tokens, prompt_tokens = req.resume.generated_tokens, 0
        failures = 0  # routers lost in a row, since the last message
        while True:
            try:
                for message in self._stub().Generate(
                    req, timeout=self._left(deadline), metadata=self._metadata
                ):
                    failures = 0
                    if message.HasField("delta"):
                        texts.append(message.delta.text)
                        tokens += message.delta.token_count
                        prompt_tokens = prompt_tokens or message.delta.prompt_tokens
                    elif prompt_tokens:
                        message.summary.prompt_tokens = prompt_tokens
                    yield message
                    if message.HasField("summary"):
                        return
                raise RouterLost("the router ended the stream without its summary")
            except (grpc.RpcError, RouterLost) as exc:
                failures += 1
                self._move_or_raise(exc, failures, deadline)
            if req.max_tokens and tokens >= req.max_tokens:  # only its summary was lost
                yield _length_summary(req, prompt_tokens, tokens)
                return
            if tokens:
                req.resume.CopyFrom(
                    types_pb2.ResumeState(generated_text="".join(texts), generated_tokens=tokens)
                )

    def stream(self, model_id: str, prompt: str, **options: object) -> Iterator[str]:
        """Only the text, as it arrives."""
        for message in self.generate(self.request(model_id, prompt, **options)):  # type: ignore[arg-type]
            if message.HasField("delta"):
                yield message.delta.text

    def infer(self, request: types_pb2.GenerateRequest) -> router_pb2.InferResponse:
        """One answer with the whole text and its statistics. A router lost under it runs
        it again on the next (nothing of it reached the caller)."""
        return self._unary(lambda stub, **kw: stub.Infer(request, **kw))

    def embed(self, model_id: str, texts: list[str]) -> list[list[float]]:
        """One L2-normalized vector per text."""
        request = types_pb2.EmbedRequest(model_id=model_id, inputs=texts)
        response = self._unary(lambda stub, **kw: stub.Embed(request, **kw))
        return [list(e.values) for e in response.embeddings]

    def models(self) -> types_pb2.ListModelsResponse:
        return self._unary(
            lambda stub, **kw: stub.ListModels(types_pb2.ListModelsRequest(), **kw), 10.0
        )

    def status(self) -> types_pb2.GetStatusResponse:
        return self._unary(
            lambda stub, **kw: stub.GetStatus(types_pb2.GetStatusRequest(), **kw), 10.0
        )

    def _unary(self, call: Callable[..., T], timeout_s: float | None = None) -> T:
        deadline = time.monotonic() + (timeout_s or self._timeout_s)
        failures = 0
        while True:
            try:
                return call(self._stub(), timeout=self._left(deadline), metadata=self._metadata)
            except grpc.RpcError as exc:
                failures += 1
                self._move_or_raise(exc, failures, deadline)

    def _stub(self) -> router_pb2_grpc.RouterStub:
        return self._stubs[self._current]

    def _left(self, deadline: float) -> float:
        return max(0.001, deadline - time.monotonic())

    def _move_or_raise(self, exc: Exception, failures: int, deadline: float) -> None:
        """Moves to the next router when no router answered `exc`; after a round in which
        every router failed, pauses first (up to ROUNDS rounds, within the deadline).
        Raises `exc` otherwise."""
        if isinstance(exc, grpc.RpcError) and _answered(exc):
            raise exc
        rounds, step = divmod(failures, len(self.addresses))
        if step == 0:
            pause = min(MAX_PAUSE_S, FIRST_PAUSE_S * 2 ** (rounds - 1))
            if rounds > ROUNDS or time.monotonic() + pause >= deadline:
                raise exc
            time.sleep(pause)
        self._current = (self._current + 1) % len(self.addresses)
        self.moves += 1


def _length_summary(
    request: types_pb2.GenerateRequest, prompt_tokens: int, tokens: int
) -> types_pb2.GenerateResponse:
    """The summary of a stream that received all its tokens before its router died."""
    summary = types_pb2.GenerationSummary(
        finish_reason=types_pb2.FINISH_REASON_LENGTH,
        prompt_tokens=prompt_tokens,
        completion_tokens=tokens,
        model_id=request.model_id,
    )
    return types_pb2.GenerateResponse(request_id=request.request_id, summary=summary)


def _answered(exc: grpc.RpcError) -> bool:
    """A router answered this status itself (not a connection refused, cut or reset)."""
    if not isinstance(exc, grpc.Call) or exc.code() not in MOVABLE_CODES:
        return True
    return any(k == ORIGIN_KEY for k, _ in (exc.trailing_metadata() or ()))
