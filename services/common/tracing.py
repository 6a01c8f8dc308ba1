"""OpenTelemetry tracing shared by the three services.

`setup_tracing` installs a tracer provider that exports spans over OTLP/gRPC when an endpoint
is configured (OTEL_EXPORTER_OTLP_ENDPOINT, what Jaeger accepts on port 4317), and a no-op one
otherwise: no endpoint, no export, no noise, almost no cost. W3C trace context travels in gRPC
metadata (`traceparent`, `tracestate`): `incoming_context` reads a caller's, `outgoing_metadata`
writes the current span's for the next hop, and `server_span` opens the span of an RPC and
records its final status code.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.status import final_code

_PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"


def setup_tracing(service_name: str, endpoint: str | None) -> None:
    """Installs the global tracer provider for this process (call once, from __main__)."""
    if not endpoint:
        return  # the API's default no-op provider: spans are not recorded or exported
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)


def shutdown_tracing() -> None:
    """Flushes spans still buffered (at shutdown)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def incoming_context(metadata: Iterable[tuple[str, Any]] | None) -> otel_context.Context:
    """The trace context a caller sent in its metadata (empty if none)."""
    carrier = {k: v for k, v in (metadata or ()) if k in (TRACEPARENT, "tracestate")}
    return _PROPAGATOR.extract(carrier)


def outgoing_metadata(span: Span | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata carrying the current span's context (or `span`'s) to the next hop."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, None if span is None else trace.set_span_in_context(span))
    return tuple(carrier.items())


@contextlib.contextmanager
def server_span(
    name: str, metadata: Iterable[tuple[str, Any]] | None, **attributes: Any
) -> Iterator[Span]:
    """The current span of an RPC, child of the caller's context; on an exception it records
    the gRPC status code the error maps to (and re-raises)."""
    span = tracer("inference").start_span(
        name,
        context=incoming_context(metadata),
        kind=SpanKind.SERVER,
        attributes={k: v for k, v in attributes.items() if v is not None},
        record_exception=False,
        set_status_on_exception=False,
    )
    with _current(span):
        try:
            yield span
        except BaseException as exc:
            code = final_code(exc)
            span.set_attribute("rpc.grpc.status_code", code)
            if code != "OK":
                span.set_status(Status(StatusCode.ERROR, code))
            raise
        else:
            span.set_attribute("rpc.grpc.status_code", "OK")
        finally:
            span.end()


_ATTACHED_HERE: contextvars.ContextVar[bool] = contextvars.ContextVar("span_attached_here")


@contextlib.contextmanager
def _current(span: Span) -> Iterator[None]:
    """Makes `span` current, and undoes it where that can be done. A streaming servicer is an
    async generator: when its call is cancelled, gRPC closes it from another context than the
    one it ran in, where OpenTelemetry's detach fails (and logs an ERROR with a traceback);
    that context is being discarded with its call, so there is nothing to undo."""
    token = otel_context.attach(trace.set_span_in_context(span))
    here = _ATTACHED_HERE.set(True)
    try:
        yield
    finally:
        try:
            _ATTACHED_HERE.reset(here)  # raises in any other Context, a copy of it too
        except ValueError:
            pass
        else:
            otel_context.detach(token)


def record_summary(span: Span, summary: Any) -> None:
    """Puts a GenerationSummary's figures on a span."""
    span.set_attributes(
        {
            "inference.tokens_in": summary.prompt_tokens,
            "inference.tokens_out": summary.completion_tokens,
            "inference.gpu_id": summary.gpu_id,
            "inference.worker": summary.worker_id,
            "inference.finish_reason": summary.finish_reason,
            "inference.queue_time_ms": summary.queue_time_ms,
        }
    )


def record_phases(started_ns: int, first_token_ns: int, end_ns: int, finished: Any) -> None:
    """Adds the prefill (start to first token) and decode (first to last token) spans of a
    generation under the current span, with its token counts."""
    current = trace.get_current_span()
    if not current.is_recording():
        return
    current.set_attributes(
        {
            "inference.tokens_in": finished.prompt_tokens,
            "inference.tokens_out": finished.completion_tokens,
            "inference.finish_reason": finished.reason.value,
        }
    )
    first = first_token_ns or end_ns
    t = tracer("inference")
    t.start_span(
        "worker.prefill",
        start_time=started_ns,
        attributes={"inference.tokens_in": finished.prompt_tokens},
    ).end(end_time=first)
    t.start_span(
        "worker.decode",
        start_time=first,
        attributes={"inference.tokens_out": finished.completion_tokens},
    ).end(end_ns)
