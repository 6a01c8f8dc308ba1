"""Signed leases: only a scheduler can sign what a lease grants; a worker verifies it.

A lease token is a serialized `LeaseClaims` and its Ed25519 signature. The scheduler holds the
private key (`lease_signing_key_file`, or a key drawn at each start without one); workers hold
only public keys: the one the scheduler hands over when it accepts their session, or those
pinned by configuration (`lease_public_keys`), which then are the only ones accepted. A worker
keeps the last few keys it was given, so leases granted just before a scheduler restart stay
valid until they must start. Routers, workers and the actuator hold no key that signs: the
fleet secret authenticates calls, it mints no work.

`python -m services.common.lease_token new FILE` writes a new private key (PEM) and prints
its public key (base64), the value workers pin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sys
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from inference.v1 import types_pb2

KEYS_KEPT = 3  # keys a worker accepts: the current scheduler's and those before it
PUBLIC_KEY_BYTES = 32


class LeaseRefused(Exception):
    """The token is missing, forged, for another worker or request, expired, or reused."""


class LeaseKeyError(ValueError):
    """A key file or a pinned public key is missing or malformed. The message says which."""


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


class LeaseSigner:
    """The scheduler's private key and what it signs."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> LeaseSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: str) -> LeaseSigner:
        """The key in a PEM file (PKCS#8, as `new` writes it). Raises LeaseKeyError."""
        try:
            private = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise LeaseKeyError(f"lease signing key {path}: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise LeaseKeyError(f"lease signing key {path}: not an Ed25519 key")
        return cls(private)

    def sign(self, claims: types_pb2.LeaseClaims) -> types_pb2.LeaseToken:
        claims.key_id = self.key_id
        body = claims.SerializeToString(deterministic=True)
        return types_pb2.LeaseToken(claims=body, signature=self._private.sign(body))

    def pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def public_key_text(public_key: bytes) -> str:
    return base64.b64encode(public_key).decode()


def parse_public_keys(text: str) -> list[bytes]:
    """Comma-separated base64 Ed25519 public keys (as `new` prints them). Raises
    LeaseKeyError."""
    keys = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            raw = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            raise LeaseKeyError(f"lease public key {part[:60]!r} is not base64") from None
        if len(raw) != PUBLIC_KEY_BYTES:
            raise LeaseKeyError(f"lease public key {part[:60]!r} is not a 32-byte Ed25519 key")
        keys.append(raw)
    return keys


class LeaseVerifier:
    """The keys a worker accepts and the check of a presented token. With pinned keys, only
    those: a key handed over that is not among them is refused."""

    def __init__(self, pinned: Iterable[bytes] = ()) -> None:
        self._pinned = {key_id(k) for k in pinned}
        self._keys: deque[tuple[str, Ed25519PublicKey]] = deque(
            ((key_id(k), Ed25519PublicKey.from_public_bytes(k)) for k in pinned),
            maxlen=None if self._pinned else KEYS_KEPT,
        )

    def add_key(self, public_key: bytes) -> None:
        """A key a scheduler handed over. Raises LeaseKeyError if it is malformed or, with
        pinned keys, not one of them."""
        kid = key_id(public_key)
        if self._pinned and kid not in self._pinned:
            raise LeaseKeyError(f"the scheduler's lease key {kid} is not a pinned key")
        if self.knows(kid):
            return
        try:
            key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            raise LeaseKeyError("the scheduler's lease key is not an Ed25519 key") from None
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
        try:
            if key is None:
                raise InvalidSignature
            key.verify(token.signature, token.claims)
        except InvalidSignature:
            raise LeaseRefused("lease not signed by this worker's scheduler") from None
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


def write_new_key(path: str) -> str:
    """Writes a new signing key to `path` (owner-only) and returns its public key, base64."""
    signer = LeaseSigner.generate()
    target = Path(path)
    target.touch(mode=0o600, exist_ok=False)
    target.write_bytes(signer.pem())
    return public_key_text(signer.public_key)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("new", "public"):
        print("usage: python -m services.common.lease_token new FILE | public FILE")
        return 2
    try:
        if argv[0] == "new":
            print(write_new_key(argv[1]))
        else:
            print(public_key_text(LeaseSigner.from_file(argv[1]).public_key))
    except (LeaseKeyError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
