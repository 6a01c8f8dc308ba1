"""mTLS between the services, when certificates are configured (see deploy/tls/make_certs.sh).

A service with `tls_cert_file`, `tls_key_file` and `tls_ca_file` serves TLS and requires a
client certificate signed by the CA; its internal channels present its own certificate and
trust only that CA. With none set, traffic is plaintext (the local default, all on loopback).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.config import ConfigError, is_loopback

# Values shipped in deploy/ as placeholders: a service refuses to run with them.
PLACEHOLDER_MARK = "change-me"


@dataclass(frozen=True)
class TlsFiles:
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def check(self, need_ca: bool = True) -> None:
        """mTLS files: all three or none; a public listener's (`need_ca` false): certificate
        and key, or none."""
        given = [bool(self.cert_file), bool(self.key_file), bool(self.ca_file)]
        wanted = given if need_ca else given[:2]
        if any(wanted) and not all(wanted):
            raise ConfigError("tls_cert_file, tls_key_file (and for mTLS tls_ca_file) go together")
        for path in (self.cert_file, self.key_file, self.ca_file):
            if path and not Path(path).is_file():
                raise ConfigError(f"TLS file not found: {path}")

    def _read(self) -> tuple[bytes, bytes, bytes]:
        return (
            Path(self.cert_file).read_bytes(),
            Path(self.key_file).read_bytes(),
            Path(self.ca_file).read_bytes(),
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """mTLS with a CA (client certificates required); TLS alone without one."""
        cert = Path(self.cert_file).read_bytes()
        key = Path(self.key_file).read_bytes()
        if not self.ca_file:
            return grpc.ssl_server_credentials([(key, cert)])
        ca = Path(self.ca_file).read_bytes()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side SSL context (the HTTP door)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def channel_credentials(self) -> grpc.ChannelCredentials:
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


@dataclass(frozen=True)
class SecuritySettings:
    """Fields every service config shares for its internal calls."""

    internal_secret: str = ""  # shared by the fleet's internal calls; INFERENCE_INTERNAL_SECRET
    tls_cert_file: str = ""  # mTLS between the services (deploy/tls/make_certs.sh); empty: off
    tls_key_file: str = ""
    tls_ca_file: str = ""

    def require_secret(self, service: str, *addresses: str) -> None:
        """A service reachable off loopback (any of `addresses`) needs the fleet's secret,
        and no service runs with a placeholder secret. Raises ConfigError."""
        if PLACEHOLDER_MARK in self.internal_secret:
            raise ConfigError(
                f"{service}: the internal secret is the shipped placeholder; set "
                "INFERENCE_INTERNAL_SECRET to a random value (openssl rand -hex 32)"
            )
        exposed = [a for a in addresses if a and not is_loopback(a)]
        if exposed and not self.internal_secret:
            raise ConfigError(
                f"{service}: {exposed[0]} is off loopback, so internal calls need the fleet's "
                "secret: set INFERENCE_INTERNAL_SECRET (openssl rand -hex 32) for every service"
            )

    def tls(self) -> TlsFiles:
        """The TLS files (checked: all three or none)."""
        files = TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)
        files.check()
        return files
