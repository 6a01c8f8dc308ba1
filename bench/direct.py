"""Calling a worker directly, for "worker alone" baselines: the bench runs the system with a
fleet secret it knows and a lease signing key it holds (the scheduler's, written by `env`), and
signs its own leases, as the scheduler would (a worker runs nothing without a lease)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from inference.v1 import scheduler_pb2_grpc, types_pb2, worker_pb2

from services.common.internal_auth import SECRET_KEY
from services.common.lease_token import LeaseSigner

SECRET = "bench-fleet-secret"
METADATA = ((SECRET_KEY, SECRET),)
_SIGNER = LeaseSigner.generate()


def env(logs: Path) -> dict[str, str]:
    """The environment of a system whose scheduler signs with the bench's key."""
    key_file = Path(logs) / "lease-signing-key.pem"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(_SIGNER.pem())
    return {"INFERENCE_INTERNAL_SECRET": SECRET, "SCHEDULER_LEASE_SIGNING_KEY_FILE": str(key_file)}


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
    """The request with a lease for `worker_id`, signed with the scheduler's key."""
    claims = types_pb2.LeaseClaims(
        lease_id=lease_id,
        worker_id=worker_id,
        request_id=request.request_id,
        model_id=request.model_id,
        max_tokens=request.max_tokens,
        start_by_unix_ms=int(time.time() * 1000) + 60_000,
    )
    token = _SIGNER.sign(claims)
    return worker_pb2.ExecuteRequest(lease_id=lease_id, request=request, lease=token)
