"""How many waiting unary calls one grpc.aio server holds before some end CANCELLED.

    python -m bench.grpc_waiting_calls [--calls 1000,2000,4000,8000]

A server whose handler waits 10 s (standard health service, nothing of ours) and one client
making N calls at once; prints how each call ended. bench.fleet found the scheduler's
Acquire calls ending CANCELLED at once, without its handler ever running, once several
thousand requests waited (2× load on 1,000 workers); this shows the same with gRPC alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class Waiting(health_pb2_grpc.HealthServicer):
    async def Check(self, request, context):
        await asyncio.sleep(10)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def measure(calls: int) -> Counter[str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Waiting(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def one() -> None:
            try:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=60)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1

        await asyncio.gather(*(one() for _ in range(calls)))
    await server.stop(0)
    return codes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", default="1000,2000,4000,8000")
    parser.add_argument("--out", default="bench/results/grpc_waiting_calls.json")
    args = parser.parse_args()
    rows = []
    for calls in (int(n) for n in args.calls.split(",")):
        codes = asyncio.run(measure(calls))
        rows.append({"calls": calls, "codes": dict(codes)})
        print(f"{calls:>6} waiting calls: {dict(codes)}", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
