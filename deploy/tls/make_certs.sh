#!/usr/bin/env bash
# Makes a private CA and one certificate per role (router, scheduler, worker, actuator) for
# mTLS between the services. Each certificate serves and authenticates as a client; its
# common name is its role, which the services check (only routers may call Acquire and Tickets, only
# workers open WorkerSession, ...), and callers check a peer's certificate for its role's
# name, so pods reached by IP need no IP in their certificates.
#   deploy/tls/make_certs.sh [out_dir]   (default: deploy/tls/certs)
set -euo pipefail
out="${1:-$(dirname "$0")/certs}"
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=inference-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
for name in router scheduler worker actuator; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$name.key" \
    -out "$name.csr" 2>/dev/null
  printf '%s\n' \
    "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:$name,DNS:inference-$name" \
    "extendedKeyUsage=serverAuth,clientAuth" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
done
echo "certificates in $out: ca.crt and {router,scheduler,worker,actuator}.{crt,key}"
