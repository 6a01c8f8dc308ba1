"""A streaming servicer's span when gRPC closes the servicer from another context (a
cancelled call): the span ends and nothing is logged as an error (review finding 19)."""

import asyncio
import contextvars
import logging

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing


async def servicer():
    with tracing.server_span("worker.Execute", ()):
        for i in range(10):
            yield i


def test_a_stream_closed_from_another_context_ends_its_span_without_an_error_log(caplog):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    original = tracing.tracer
    tracing.tracer = lambda name: tracer  # this test's provider, not the process's

    async def run() -> None:
        loop, stream = asyncio.get_running_loop(), servicer()
        serving = contextvars.copy_context()  # the call's task runs the servicer ...
        await loop.create_task(stream.__anext__(), context=serving)
        closing = contextvars.copy_context()  # ... and another closes it when cancelled
        await loop.create_task(stream.aclose(), context=closing)
        assert trace.get_current_span() is trace.INVALID_SPAN

    try:
        with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
            asyncio.run(run())
    finally:
        tracing.tracer = original
    assert [r.getMessage() for r in caplog.records] == []
    [span] = exporter.get_finished_spans()
    assert span.name == "worker.Execute"
    assert "rpc.grpc.status_code" in span.attributes  # it ended, with its status
