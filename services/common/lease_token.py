"""Signed leases: the scheduler signs what a lease grants, the worker verifies it.

A lease token is a serialized `LeaseClaims` and its HMAC-SHA256 under the fleet's lease key.
The scheduler hands its key to each worker when the worker's session is accepted; with an
internal secret the key is derived from it (so it survives scheduler restarts), without one
each scheduler start draws a new key. A worker keeps the last few keys it was given, so
leases granted just before a scheduler restart stay valid until they must start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import deque

from inference.v1 import types_pb2

KEY_CONTEXT = b"inference.v1 lease key"
KEYS_KEPT = 3  # keys a worker accepts: the current scheduler's and those before it


class LeaseRefused(Exception):
    """The token is missing, forged, for another worker or request, expired, or reused."""


def lease_key(internal_secret: str) -> bytes:
    """The key leases are signed with: derived from the secret, or random without one."""
    if not internal_secret:
        return os.urandom(32)
    return hmac.new(internal_secret.encode(), KEY_CONTEXT, hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def sign(claims: types_pb2.LeaseClaims, key: bytes) -> types_pb2.LeaseToken:
    claims.key_id = key_id(key)
    body = claims.SerializeToString(deterministic=True)
    return types_pb2.LeaseToken(claims=body, signature=_mac(key, body))


class LeaseVerifier:
    """The keys a worker accepts and the check of a presented token."""

    def __init__(self) -> None:
        self._keys: deque[tuple[str, bytes]] = deque(maxlen=KEYS_KEPT)

    def add_key(self, key: bytes) -> None:
        kid = key_id(key)
        if all(k != kid for k, _ in self._keys):
            self._keys.appendleft((kid, key))

    def knows(self, kid: str) -> bool:
        return any(k == kid for k, _ in self._keys)

    def claims(self, token: types_pb2.LeaseToken) -> types_pb2.LeaseClaims:
        """The token's claims if its signature is good. Raises LeaseRefused."""
        if not token.claims or not token.signature:
            raise LeaseRefused("no lease: run requests through the scheduler (Acquire)")
        claims = types_pb2.LeaseClaims()
        try:
            claims.ParseFromString(token.claims)
        except Exception:  # noqa: BLE001 - any malformed body is a refused lease
            raise LeaseRefused("malformed lease") from None
        key = next((k for kid, k in self._keys if kid == claims.key_id), None)
        if key is None or not hmac.compare_digest(_mac(key, token.claims), token.signature):
            raise LeaseRefused("lease not signed by this worker's scheduler")
        return claims


def check_claims(
    claims: types_pb2.LeaseClaims,
    worker_id: str,
    request_id: str,
    model_id: str,
    now_ms: int,
) -> None:
    """Raises LeaseRefused unless the claims grant this request on this worker, still."""
    if claims.worker_id != worker_id:
        raise LeaseRefused(f"lease {claims.lease_id} is for another worker")
    if claims.request_id != request_id or claims.model_id != model_id:
        raise LeaseRefused(f"lease {claims.lease_id} is for another request")
    if claims.start_by_unix_ms < now_ms:
        raise LeaseRefused(f"lease {claims.lease_id} expired before it was presented")


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()
