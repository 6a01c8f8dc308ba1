import json
import logging

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from services.common import logs


def test_a_log_line_is_json_with_trace_and_request_ids():
    formatter = logs.JsonFormatter("router")
    context = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    record = logging.LogRecord(
        "services.router", logging.WARNING, __file__, 1, "slow request %s", ("r-1",), None
    )
    token = logs.request_id.set("r-1")
    try:
        with trace.use_span(NonRecordingSpan(context)):
            line = formatter.format(record)
    finally:
        logs.request_id.reset(token)
    event = json.loads(line)
    assert event["message"] == "slow request r-1" and event["level"] == "warning"
    assert event["service"] == "router" and event["request_id"] == "r-1"
    assert event["trace_id"] == f"{0xABC:032x}" and event["span_id"] == f"{0xDEF:016x}"


def test_without_a_span_or_request_there_are_no_ids():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    event = json.loads(logs.JsonFormatter("worker").format(record))
    assert "trace_id" not in event and "request_id" not in event
