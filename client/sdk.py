"""A small synchronous client over the generated stubs.

with InferenceClient("localhost:50051") as client:
    for text in client.stream("smollm2-135m", "Hello", priority="high"):
        print(text, end="")
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
from inference.v1 import router_pb2, router_pb2_grpc, types_pb2

PRIORITIES = {
    "high": types_pb2.PRIORITY_HIGH,
    "medium": types_pb2.PRIORITY_MEDIUM,
    "low": types_pb2.PRIORITY_LOW,
}


class InferenceClient:
    def __init__(
        self,
        address: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        tls: bool = False,
        ca_file: str | None = None,
    ):
        """`tls`: connect over TLS, trusting `ca_file` (PEM) or the system's roots."""
        if tls or ca_file:
            ca = Path(ca_file).read_bytes() if ca_file else None
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            self._channel = grpc.secure_channel(address, credentials)
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub = router_pb2_grpc.RouterStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout_s = timeout_s

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

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
        """The raw stream: deltas, then one summary."""
        return self._stub.Generate(request, timeout=self._timeout_s, metadata=self._metadata)

    def stream(self, model_id: str, prompt: str, **options: object) -> Iterator[str]:
        """Only the text, as it arrives."""
        for message in self.generate(self.request(model_id, prompt, **options)):  # type: ignore[arg-type]
            if message.HasField("delta"):
                yield message.delta.text

    def infer(self, request: types_pb2.GenerateRequest) -> router_pb2.InferResponse:
        """One answer with the whole text and its statistics."""
        return self._stub.Infer(request, timeout=self._timeout_s, metadata=self._metadata)

    def embed(self, model_id: str, texts: list[str]) -> list[list[float]]:
        """One L2-normalized vector per text."""
        request = types_pb2.EmbedRequest(model_id=model_id, inputs=texts)
        response = self._stub.Embed(request, timeout=self._timeout_s, metadata=self._metadata)
        return [list(e.values) for e in response.embeddings]

    def models(self) -> types_pb2.ListModelsResponse:
        return self._stub.ListModels(
            types_pb2.ListModelsRequest(), timeout=10, metadata=self._metadata
        )

    def status(self) -> types_pb2.GetStatusResponse:
        return self._stub.GetStatus(
            types_pb2.GetStatusRequest(), timeout=10, metadata=self._metadata
        )
