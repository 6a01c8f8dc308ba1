"""Waits until the router is SERVING and every model is ready (or the timeout passes).

    python scripts/wait_ready.py --address localhost:50051 --timeout 300 [--models a,b]

`--models` names the models to wait for (default: every model; "" for none, when models
may be scaled to zero).
Exit status 0 when ready, 1 on timeout.
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference.v1 import router_pb2_grpc, types_pb2


def ready(channel: grpc.Channel, required: set[str] | None = None) -> tuple[bool, str]:
    health = health_pb2_grpc.HealthStub(channel)
    try:
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            return False, "router not serving"
        models = (
            router_pb2_grpc.RouterStub(channel)
            .ListModels(types_pb2.ListModelsRequest(), timeout=5)
            .models
        )
    except grpc.RpcError as exc:
        return False, f"{exc.code().name}"
    if required is not None:
        missing = required - {m.model_id for m in models}
        waiting = sorted(
            missing | {m.model_id for m in models if m.model_id in required and not m.ready}
        )
        if waiting:
            return False, f"models loading: {', '.join(waiting)}"
        return True, ", ".join(sorted(required)) or "router serving"
    waiting = [m.model_id for m in models if not m.ready]
    if not models or waiting:
        return False, f"models loading: {', '.join(waiting) or 'none registered yet'}"
    return True, ", ".join(m.model_id for m in models)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default="localhost:50051")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--models", help="comma-separated models to wait for (default: all)")
    args = parser.parse_args()
    required = None if args.models is None else {m for m in args.models.split(",") if m}
    deadline = time.monotonic() + args.timeout
    last = ""
    with grpc.insecure_channel(args.address) as channel:
        while time.monotonic() < deadline:
            ok, what = ready(channel, required)
            if ok:
                print(f"ready: {what}")
                return 0
            if what != last:
                print(f"waiting: {what}", flush=True)
                last = what
            time.sleep(0.5)
    print(f"not ready after {args.timeout:.0f}s: {last}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
