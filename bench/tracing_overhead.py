"""Throughput of the whole stack with tracing on (OTLP export) and off, in one run.

    python -m bench.tracing_overhead [--seconds 15] [--out bench/results/tracing.json]

A fast simulated model (1 ms steps, 64 slots) makes the services' own CPU the bottleneck:
64 concurrent aio clients send Generate requests of 8 tokens for a fixed time. With tracing
on, every service exports its spans to an in-process OTLP/gRPC receiver (as Jaeger would
receive them). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, types_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.local_system import LocalSystem

CONFIG = """
[router]
[scheduler.admission]
queue_capacity = 4096
[worker]
flush_interval_ms = 5.0
[[models]]
id = "sim-fast"
engine = "simulated"
max_context_tokens = 4096
max_output_tokens = 256
default_max_tokens = 8
max_slots = 64
[models.simulation]
gpu_type = "fast"
[models.simulation.profiles.fast]
prefill_tokens_per_s = 1000000.0
decode_ms_per_step = 1.0
batch_slowdown = 0.0
kv_capacity_tokens = 10000000
"""


class CountingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request, context):
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def load(address: str, seconds: float, concurrency: int = 64) -> dict[str, float]:
    done = 0
    tokens = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done, tokens
            request = types_pb2.GenerateRequest(model_id="sim-fast", prompt="Hello", max_tokens=8)
            while time.perf_counter() < stop:
                async for message in stub.Generate(request, timeout=30):
                    if message.HasField("summary"):
                        tokens += message.summary.completion_tokens
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    return {"requests_per_s": done / elapsed, "tokens_per_s": tokens / elapsed}


def measure(directory: Path, seconds: float, env: dict[str, str]) -> dict[str, float]:
    logs = directory / f"logs-{len(env)}"
    logs.mkdir()
    system = LocalSystem(logs, env={"INFERENCE_CONFIG": str(directory / "bench.toml"), **env})
    system.start()
    try:
        asyncio.run(load(system.router_address, 2.0))  # warm-up
        return asyncio.run(load(system.router_address, seconds))
    finally:
        system.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", default="bench/results/tracing.json")
    args = parser.parse_args()
    collector = CountingCollector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "bench.toml").write_text(CONFIG)
        off = measure(directory, args.seconds, {})
        on = measure(
            directory, args.seconds, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
        )
    server.stop(0)
    ratio = on["requests_per_s"] / off["requests_per_s"]
    print(f"{'tracing':>8} {'requests/s':>11} {'tokens/s':>9}")
    print(f"{'off':>8} {off['requests_per_s']:>11.1f} {off['tokens_per_s']:>9.0f}")
    print(f"{'on':>8} {on['requests_per_s']:>11.1f} {on['tokens_per_s']:>9.0f}")
    print(f"tracing on / off: {ratio:.1%} of the throughput; {collector.spans} spans received")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"off": off, "on": on, "on_over_off": ratio, "spans_received": collector.spans},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
