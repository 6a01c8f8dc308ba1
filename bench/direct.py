"""Calling a worker directly, for "worker alone" baselines: the bench runs the system with a
fleet secret it knows and signs its own leases, as the scheduler would (a worker runs nothing
without a lease)."""

from __future__ import annotations

import time

import grpc
from inference.v1 import scheduler_pb2_grpc, types_pb2, worker_pb2

from services.common import lease_token
from services.common.internal_auth import SECRET_KEY

SECRET = "bench-fleet-secret"
ENV = {"INFERENCE_INTERNAL_SECRET": SECRET}
METADATA = ((SECRET_KEY, SECRET),)
_KEY = lease_token.lease_key(SECRET)


def worker_ids(scheduler_address: str) -> list[str]:
    """The registered workers' ids, from the scheduler."""
    with grpc.insecure_channel(scheduler_address) as channel:
        status = scheduler_pb2_grpc.SchedulerStub(channel).GetStatus(
            types_pb2.GetStatusRequest(), metadata=METADATA, timeout=5
        )
    return [w.worker_id for w in status.workers]


def leased(
    request: types_pb2.GenerateRequest, worker_id: str, lease_id: str
) -> worker_pb2.ExecuteRequest:
    """The request with a lease for `worker_id`, signed with the fleet's key."""
    claims = types_pb2.LeaseClaims(
        lease_id=lease_id,
        worker_id=worker_id,
        request_id=request.request_id,
        model_id=request.model_id,
        max_tokens=request.max_tokens,
        start_by_unix_ms=int(time.time() * 1000) + 60_000,
    )
    token = lease_token.sign(claims, _KEY)
    return worker_pb2.ExecuteRequest(lease_id=lease_id, request=request, lease=token)
