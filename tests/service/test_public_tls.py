"""TLS at the public door: the router's gRPC and HTTP listeners serve TLS from configured
files; the Python client and the `openai` client connect over it, and plaintext is refused."""

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import grpc
import httpx2
import openai
import pytest
from inference.v1 import router_pb2_grpc

from client.sdk import InferenceClient
from tests.stack import request, start_stack

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "tls" / "make_certs.sh"


@pytest.fixture
async def tls_door(tmp_path):
    await asyncio.to_thread(
        subprocess.run, [str(SCRIPT), str(tmp_path)], check=True, capture_output=True
    )
    stack = await start_stack(
        router_overrides={
            "public_tls_cert_file": str(tmp_path / "router.crt"),
            "public_tls_key_file": str(tmp_path / "router.key"),
        }
    )
    yield stack, tmp_path / "ca.crt"
    await stack.close()


async def test_the_clients_connect_over_tls(tls_door):
    stack, ca = tls_door

    def over_tls():
        with InferenceClient(f"localhost:{stack.router.port}", ca_file=str(ca)) as sdk:
            return sdk.infer(sdk.request("sim-fast", "Hello", max_tokens=3))

    answer = await asyncio.to_thread(over_tls)
    assert answer.completion_tokens == 3
    client = openai.AsyncOpenAI(
        base_url=f"https://localhost:{stack.router.http.port}/v1",
        api_key="-",
        max_retries=0,
        default_headers={"Authorization": ""},
        http_client=httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))),
    )
    chat = await client.chat.completions.create(
        model="sim-fast", max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
    )
    assert chat.usage.completion_tokens == 3
    await client.close()


async def test_plaintext_is_refused_on_a_tls_listener(tls_door):
    stack, _ = tls_door
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.router.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await router_pb2_grpc.RouterStub(channel).Infer(request(max_tokens=1), timeout=3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            url = f"http://127.0.0.1:{stack.router.http.port}/health"
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as response:
                await response.read()
