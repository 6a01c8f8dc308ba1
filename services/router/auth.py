"""API key → tenant. Keys arrive as `authorization: Bearer <key>` metadata."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from services.common.errors import Unauthenticated
from services.router.config import TenantSpec

ANONYMOUS = "anonymous"


class Authenticator:
    def __init__(self, tenants: Iterable[TenantSpec], allow_anonymous: bool) -> None:
        self._by_hash = {t.api_key_sha256: t.tenant_id for t in tenants}
        self._allow_anonymous = allow_anonymous

    def tenant_for(self, metadata: Iterable[tuple[str, str | bytes]]) -> str:
        """The tenant of the caller. Raises Unauthenticated for a missing or wrong key."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        if header is not None and header.strip().lower() in ("", "bearer"):
            header = None  # an empty bearer key carries no credential: same as none
        if header is None:
            if self._allow_anonymous:
                return ANONYMOUS
            raise Unauthenticated("missing authorization metadata (Bearer <api key>)")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization must be 'Bearer <api key>'")
        digest = hashlib.sha256(key.strip().encode()).hexdigest()
        for known, tenant in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise Unauthenticated("invalid API key")
