"""What signing and checking a lease costs: Ed25519 (this release: only schedulers can sign)
beside the HMAC-SHA256 under a key derived from the fleet secret (the previous release).

    python -m bench.lease_signing [--count 20000] [--out bench/results/lease_signing.json]

One process, one run: a lease's claims as the scheduler fills them, signed `--count` times,
and the token checked `--count` times by a worker's verifier; the median of 5 rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import time

from inference.v1 import types_pb2

from bench import write_report
from services.common.lease_token import LeaseSigner, LeaseVerifier


def claims() -> types_pb2.LeaseClaims:
    return types_pb2.LeaseClaims(
        lease_id="lease-3f9a12cc-000123",
        worker_id="worker-smollm2-135m-7f3a2b-4",
        request_id="tenant-a/6b1f0c52-8f7e-4a0c-9d55-2f0d1d2b8e11",
        model_id="smollm2-135m",
        tenant_id="tenant-a",
        priority=2,
        max_tokens=256,
        kv_tokens=512,
        start_by_unix_ms=1_800_000_000_000,
    )


def per_call_us(call, count: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count):
            call()
        rounds.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(rounds)


def hmac_costs(count: int) -> tuple[float, float]:
    key = hmac.new(b"fleet-secret", b"inference.v1 lease key", hashlib.sha256).digest()
    body = claims().SerializeToString(deterministic=True)
    mac = hmac.new(key, body, hashlib.sha256).digest()

    def sign() -> bytes:
        return hmac.new(key, claims().SerializeToString(deterministic=True), "sha256").digest()

    def verify() -> bool:
        parsed = types_pb2.LeaseClaims.FromString(body)
        return parsed.lease_id != "" and hmac.compare_digest(
            hmac.new(key, body, hashlib.sha256).digest(), mac
        )

    return per_call_us(sign, count), per_call_us(verify, count)


def ed25519_costs(count: int) -> tuple[float, float]:
    signer = LeaseSigner.generate()
    verifier = LeaseVerifier([signer.public_key])
    token = signer.sign(claims())
    return per_call_us(lambda: signer.sign(claims()), count), per_call_us(
        lambda: verifier.claims(token), count
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--out", default="bench/results/lease_signing.json")
    args = parser.parse_args()
    rows = {"hmac-sha256 (previous)": hmac_costs(args.count)}
    rows["ed25519 (this release)"] = ed25519_costs(args.count)
    print(f"{'lease signature':>24} {'sign µs':>9} {'verify µs':>10}")
    for name, (sign, verify) in rows.items():
        print(f"{name:>24} {sign:>9.1f} {verify:>10.1f}")
    write_report(args.out, {name: {"sign_us": s, "verify_us": v} for name, (s, v) in rows.items()})


if __name__ == "__main__":
    main()
