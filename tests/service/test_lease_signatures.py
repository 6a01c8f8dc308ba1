"""Only a scheduler can sign a lease (issue 25, item 3): leases carry an Ed25519 signature, the
scheduler alone holds the private key, and a worker holds public keys only, the one its
scheduler hands over or those pinned by its configuration. Whoever holds the fleet secret (a
router, a worker, the actuator) cannot mint a lease a worker accepts."""

import asyncio
import hashlib
import hmac

import grpc
import pytest
from inference.v1 import types_pb2, worker_pb2, worker_pb2_grpc

from services.common import lease_token
from services.common.config import ConfigError
from services.common.lease_token import LeaseSigner, public_key_text
from services.gpu_worker.config import WorkerConfig
from services.scheduler.config import SchedulerConfig
from tests.stack import request, sim_model, start_stack

SECRET = "lease-signature-test-secret"
MODEL = sim_model("sim-sig", slots=2, step_ms=2.0)
METADATA = (("x-internal-secret", SECRET),)


def claims_for(stack, request_id: str) -> types_pb2.LeaseClaims:
    worker = stack.workers[0]
    return types_pb2.LeaseClaims(
        lease_id=f"minted-{request_id}",
        worker_id=worker.worker_id,
        request_id=request_id,
        model_id=MODEL.model_id,
        max_tokens=4,
        start_by_unix_ms=2**62,
    )


async def execute(stack, req, token) -> list:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.workers[0].port}") as channel:
        run = worker_pb2.ExecuteRequest(lease_id=token_lease(token), request=req, lease=token)
        call = worker_pb2_grpc.WorkerStub(channel).Execute(run, metadata=METADATA, timeout=5)
        return [message async for message in call]


def token_lease(token: types_pb2.LeaseToken) -> str:
    claims = types_pb2.LeaseClaims()
    claims.ParseFromString(token.claims)
    return claims.lease_id


def minted_with_the_fleet_secret(claims, scheduler_key_id: str) -> types_pb2.LeaseToken:
    """What a holder of the secret could sign before: an HMAC under a key derived from it,
    claiming the scheduler's key id."""
    claims.key_id = scheduler_key_id
    body = claims.SerializeToString(deterministic=True)
    key = hmac.new(SECRET.encode(), b"inference.v1 lease key", hashlib.sha256).digest()
    return types_pb2.LeaseToken(claims=body, signature=hmac.new(key, body, "sha256").digest())


async def test_a_holder_of_the_fleet_secret_cannot_mint_a_lease():
    stack = await start_stack([MODEL], secret=SECRET)
    try:
        signer = stack.scheduler.lease_signer
        intruder = LeaseSigner.generate()
        spoofed = intruder.sign(claims_for(stack, "r-spoof"))
        spoofed_claims = types_pb2.LeaseClaims.FromString(spoofed.claims)
        spoofed_claims.key_id = signer.key_id  # an intruder's signature, the scheduler's id
        spoofed.claims = spoofed_claims.SerializeToString(deterministic=True)
        tokens = {
            "hmac with the secret": minted_with_the_fleet_secret(
                claims_for(stack, "r-hmac"), signer.key_id
            ),
            "another ed25519 key": intruder.sign(claims_for(stack, "r-other")),
            "another key, the scheduler's id": spoofed,
        }
        for name, token in tokens.items():
            claims = types_pb2.LeaseClaims.FromString(token.claims)
            req = request(MODEL.model_id, max_tokens=4, request_id=claims.request_id)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await execute(stack, req, token)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert "not signed by this worker's scheduler" in refused.value.details(), name
        # the same claims signed by the scheduler's key run
        real = signer.sign(claims_for(stack, "r-real"))
        req = request(MODEL.model_id, max_tokens=4, request_id="r-real")
        assert (await execute(stack, req, real))[-1].summary.completion_tokens == 4
    finally:
        await stack.close()


async def test_a_pinned_worker_runs_its_schedulers_leases_and_refuses_another_scheduler(
    tmp_path,
):
    key_file = tmp_path / "lease.pem"
    public = lease_token.write_new_key(str(key_file))
    stack = await start_stack([MODEL], workers=0, lease_signing_key_file=str(key_file))
    try:
        await stack.add_worker([MODEL], lease_public_keys=public)
        answer = await stack.router_stub().Infer(request(MODEL.model_id, max_tokens=3), timeout=5)
        assert answer.completion_tokens == 3
        other = public_key_text(LeaseSigner.generate().public_key)
        stranger = await stack.add_worker([MODEL], wait=False, lease_public_keys=other)
        await asyncio.sleep(0.5)
        assert not stranger.session.connected.is_set()  # it refused the scheduler's key
        answers = await asyncio.gather(
            *(
                stack.router_stub().Infer(request(MODEL.model_id, max_tokens=3), timeout=5)
                for _ in range(6)
            )
        )
        assert [a.completion_tokens for a in answers] == [3] * 6  # none went to the stranger
        assert stranger.host.engines[MODEL.model_id].active_sequences() == 0
    finally:
        await stack.close()


def test_keys_are_checked_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match="lease_signing_key_file"):
        SchedulerConfig(lease_signing_key_file=str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="lease_signing_key_file"):
        SchedulerConfig(lease_signing_key_file=str(tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match="not base64"):
        WorkerConfig(lease_public_keys="!!!")
    with pytest.raises(ConfigError, match="32-byte"):
        WorkerConfig(lease_public_keys="AAAA")


def test_a_worker_whose_scheduler_is_off_loopback_needs_mtls_or_a_pinned_key():
    with pytest.raises(ConfigError, match="must be pinned"):
        WorkerConfig(scheduler_address="10.0.0.5:50052", internal_secret=SECRET)
    pinned = public_key_text(LeaseSigner.generate().public_key)
    WorkerConfig(
        scheduler_address="10.0.0.5:50052", internal_secret=SECRET, lease_public_keys=pinned
    )


def test_the_key_tool_writes_a_key_and_prints_its_public_half(tmp_path, capsys):
    path = str(tmp_path / "k.pem")
    assert lease_token.main(["new", path]) == 0
    printed = capsys.readouterr().out.strip()
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0  # owner only
    assert lease_token.main(["public", path]) == 0
    assert capsys.readouterr().out.strip() == printed
    assert lease_token.parse_public_keys(printed) == [LeaseSigner.from_file(path).public_key]
    assert lease_token.main(["new", path]) == 1  # never overwrites a key
