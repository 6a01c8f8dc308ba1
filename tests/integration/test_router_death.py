"""A router killed with kill -9 mid-stream, with real processes: a client given every router
(the SDK, the CLI) continues its stream through another one and sees one stream, no token
repeated or missing; the dead router's lease ends (issue 25, item 2)."""

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference.v1 import router_pb2_grpc, types_pb2

from bench.local_system import LocalSystem
from client.sdk import InferenceClient

pytestmark = pytest.mark.slow
MODEL = "llama-3-70b"  # simulated: greedy text is a function of the prompt and position


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    local = LocalSystem(tmp_path_factory.mktemp("logs"), routers=2)
    local.start(ready_timeout_s=240, models=MODEL)
    for address in local.router_addresses:
        wait_serving(address)
    yield local
    local.kill()


def wait_serving(address: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"router {address} not serving")


def story(max_tokens: int = 80) -> types_pb2.GenerateRequest:
    return types_pb2.GenerateRequest(
        model_id=MODEL, prompt="Tell me a long story", max_tokens=max_tokens
    )


def test_a_stream_continues_through_another_router_when_its_router_is_killed(system):
    first, second = system.router_addresses
    with grpc.insecure_channel(second) as channel:
        undisturbed = list(router_pb2_grpc.RouterStub(channel).Generate(story(), timeout=60))
    expected = "".join(m.delta.text for m in undisturbed if m.HasField("delta"))
    received: list[types_pb2.GenerateResponse] = []
    ten_in = threading.Event()
    with InferenceClient([first, second], timeout_s=60) as client:

        def consume() -> None:
            for message in client.generate(story()):
                received.append(message)
                if len(received) == 10:
                    ten_in.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert ten_in.wait(60), system.logs()
        system.procs["router"].kill()  # kill -9, mid-stream
        reader.join(60)
        assert not reader.is_alive()
        assert client.moves == 1
    text = "".join(m.delta.text for m in received if m.HasField("delta"))
    assert text == expected  # one stream: nothing repeated, nothing missing
    assert received[-1].summary.completion_tokens == 80
    assert sum(m.delta.token_count for m in received if m.HasField("delta")) == 80
    with grpc.insecure_channel(second) as channel:
        status = router_pb2_grpc.RouterStub(channel)
        deadline = time.monotonic() + 30
        while status.GetStatus(types_pb2.GetStatusRequest(), timeout=5).active_leases:
            assert time.monotonic() < deadline, "the dead router's lease never ended"
            time.sleep(0.2)
