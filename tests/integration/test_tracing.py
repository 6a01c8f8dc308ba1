"""One OpenTelemetry trace per request across router, scheduler and worker processes."""

import os
import threading
import time
from concurrent import futures

import grpc
import pytest
from inference.v1 import router_pb2_grpc, types_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.local_system import LocalSystem

pytestmark = pytest.mark.slow

TRACE_ID = os.urandom(16).hex()
CLIENT_SPAN_ID = os.urandom(8).hex()


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []  # (service.name, Span)
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> dict[str, tuple[str, object]]:
        with self.lock:
            return {s.name: (svc, s) for svc, s in self.spans if s.trace_id.hex() == trace_id}


@pytest.fixture(scope="module")
def traced_system(tmp_path_factory):
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    system = LocalSystem(
        tmp_path_factory.mktemp("logs"),
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    system.start(ready_timeout_s=240)
    yield system, collector
    system.stop()
    server.stop(0)


def test_a_request_is_one_trace_across_the_three_services(traced_system):
    system, collector = traced_system
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
    with grpc.insecure_channel(system.router_address) as channel:
        call = router_pb2_grpc.RouterStub(channel).Generate(
            types_pb2.GenerateRequest(model_id="smollm2-135m", prompt="Hi", max_tokens=8),
            metadata=(("traceparent", traceparent),),
            timeout=60,
        )
        messages = list(call)
        returned = dict(call.initial_metadata())["traceparent"]
    assert returned.split("-")[1] == TRACE_ID  # the client can find its trace
    assert messages[-1].HasField("summary")

    wanted = {
        "router.Generate",
        "router.authenticate",
        "router.validate",
        "scheduler.Acquire",
        "scheduler.queue_wait",
        "lease.execute",
        "worker.Execute",
        "worker.prefill",
        "worker.decode",
    }
    deadline = time.monotonic() + 20
    while not wanted <= set(spans := collector.of_trace(TRACE_ID)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert wanted <= set(spans), sorted(spans)
    _assert_span_tree(spans)
    assert {spans[n][0] for n in wanted} == {"router", "scheduler", "gpu_worker"}

    router = {a.key: a.value for a in spans["router.Generate"][1].attributes}
    assert router["inference.model"].string_value == "smollm2-135m"
    assert router["inference.tenant"].string_value == "anonymous"
    assert router["inference.tokens_out"].int_value == messages[-1].summary.completion_tokens
    assert router["inference.gpu_id"].string_value == "cpu-0"
    assert router["rpc.grpc.status_code"].string_value == "OK"


def _assert_span_tree(spans) -> None:
    """One request's spans, each the child of the one that caused it."""

    def parent_of(name: str) -> str:
        return spans[name][1].parent_span_id.hex()

    def id_of(name: str) -> str:
        return spans[name][1].span_id.hex()

    assert parent_of("router.Generate") == CLIENT_SPAN_ID
    assert parent_of("router.validate") == id_of("router.Generate")
    # the scheduler grants the lease; the router runs it on the worker (no token crosses the
    # scheduler)
    assert parent_of("scheduler.Acquire") == id_of("router.Generate")
    assert parent_of("scheduler.queue_wait") == id_of("scheduler.Acquire")
    assert parent_of("lease.execute") == id_of("router.Generate")
    assert parent_of("worker.Execute") == id_of("lease.execute")
    assert parent_of("worker.prefill") == id_of("worker.Execute")
    assert parent_of("worker.decode") == id_of("worker.Execute")


def test_a_failed_request_records_its_status_code(traced_system):
    system, collector = traced_system
    trace_id = os.urandom(16).hex()
    with grpc.insecure_channel(system.router_address) as channel, pytest.raises(grpc.RpcError):
        router_pb2_grpc.RouterStub(channel).Infer(
            types_pb2.GenerateRequest(model_id="no-such-model", prompt="Hi"),
            metadata=(("traceparent", f"00-{trace_id}-{os.urandom(8).hex()}-01"),),
        )
    deadline = time.monotonic() + 20
    while "router.Infer" not in collector.of_trace(trace_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    _, span = collector.of_trace(trace_id)["router.Infer"]
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["rpc.grpc.status_code"] == "NOT_FOUND"
