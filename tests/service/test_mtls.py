"""mTLS between router, scheduler and workers with certificates from deploy/tls."""

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from inference.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2

from tests.stack import request, sim_model, start_stack

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "tls" / "make_certs.sh"


def tls(certs: Path, name: str) -> dict[str, str]:
    return {
        "tls_cert_file": str(certs / f"{name}.crt"),
        "tls_key_file": str(certs / f"{name}.key"),
        "tls_ca_file": str(certs / "ca.crt"),
    }


@pytest.fixture
async def tls_stack(tmp_path):
    await asyncio.to_thread(
        subprocess.run, [str(SCRIPT), str(tmp_path)], check=True, capture_output=True
    )
    model = sim_model()
    stack = await start_stack(
        [model], workers=0, router_overrides=tls(tmp_path, "router"), **tls(tmp_path, "scheduler")
    )
    await stack.add_worker([model], **tls(tmp_path, "worker"))
    yield stack, tmp_path
    await stack.close()


async def test_the_fleet_talks_mtls(tls_stack):
    stack, _ = tls_stack
    answer = await stack.router_stub().Infer(request(max_tokens=3))
    assert answer.completion_tokens == 3


async def test_the_scheduler_refuses_plaintext_and_clients_without_a_certificate(tls_stack):
    stack, certs = tls_stack
    async with grpc.aio.insecure_channel(stack.scheduler_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await scheduler_pb2_grpc.SchedulerStub(channel).GetStatus(
                types_pb2.GetStatusRequest(), timeout=3
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    only_ca = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.crt").read_bytes())
    async with grpc.aio.secure_channel(stack.scheduler_address, only_ca) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await scheduler_pb2_grpc.SchedulerStub(channel).GetStatus(
                types_pb2.GetStatusRequest(), timeout=3
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_each_method_serves_only_its_callers_roles(tls_stack):
    stack, certs = tls_stack

    def credentials(name: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.crt").read_bytes(),
            private_key=(certs / f"{name}.key").read_bytes(),
            certificate_chain=(certs / f"{name}.crt").read_bytes(),
        )

    options = (("grpc.ssl_target_name_override", "scheduler"),)
    async with grpc.aio.secure_channel(
        stack.scheduler_address, credentials("worker"), options=options
    ) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:  # a worker may not acquire leases
            await scheduler.Acquire(
                scheduler_pb2.AcquireRequest(request_id="r", model_id="sim-fast"), timeout=3
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.secure_channel(
        stack.scheduler_address, credentials("actuator"), options=options
    ) as channel:
        status = await scheduler_pb2_grpc.SchedulerStub(channel).GetStatus(
            types_pb2.GetStatusRequest(), timeout=3
        )
        assert len(status.workers) == 1  # the actuator may read the fleet
