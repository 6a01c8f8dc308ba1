"""The system across hosts of a NetBed (bench/netbed.py): the scheduler, the router and each
worker in a network namespace of its own, with its own address, serving one simulated model;
internal calls carry the fleet secret and workers pin the scheduler's lease key, as every
deployment off loopback must.

    bed = NetBed.create(); fleet = NetFleet(bed, log_dir, workers=2); fleet.start()
    fleet.workers[1].cut()  # the second worker's host goes silent
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from inference.v1 import router_pb2_grpc, types_pb2

from bench.netbed import Host, NetBed
from bench.sim_cluster import MODEL_ID, sim_config, tenant_key
from services.common import lease_token

SECRET = "netbed-fleet-secret-0123456789"
STREAMS, TOKENS = 8, 160  # 4 s streams at 25 ms a token
KEY = (("authorization", f"Bearer {tenant_key(0)}"),)


@dataclass
class NetFleet:
    bed: NetBed
    log_dir: Path
    workers: int = 2
    step_ms: float = 25.0
    slots: int = 8
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def router_address(self) -> str:
        return f"{self.hosts['router'].address}:50051"

    @property
    def scheduler_address(self) -> str:
        return f"{self.hosts['scheduler'].address}:50052"

    @property
    def worker_hosts(self) -> list[Host]:
        return [self.hosts[f"w{i}"] for i in range(self.workers)]

    def start(self, timeout_s: float = 60) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = self.log_dir / "config.toml"
        config.write_text(sim_config(self.slots, self.step_ms, 0.0, tenants=1))
        key_file = self.log_dir / "lease.pem"
        key_file.unlink(missing_ok=True)
        public = lease_token.write_new_key(str(key_file))
        for name in ("scheduler", "router", *(f"w{i}" for i in range(self.workers))):
            self.hosts[name] = self.bed.host(name)
        base = {**os.environ, "INFERENCE_CONFIG": str(config), "INFERENCE_INTERNAL_SECRET": SECRET}
        sched, router = self.hosts["scheduler"].address, self.hosts["router"].address
        self._spawn(
            "scheduler",
            ["services.scheduler"],
            base
            | {
                "SCHEDULER_LISTEN": f"{sched}:50052",
                "SCHEDULER_METRICS_LISTEN": f"{sched}:9092",
                "SCHEDULER_LEASE_SIGNING_KEY_FILE": str(key_file),
                "SCHEDULER_AUTOSCALING_ENABLED": "false",
            },
        )
        for host in self.worker_hosts:
            self._spawn(
                host.name,
                ["services.gpu_worker"],
                base
                | {
                    "WORKER_LISTEN": f"{host.address}:50061",
                    "WORKER_METRICS_LISTEN": f"{host.address}:9093",
                    "WORKER_SCHEDULER_ADDRESS": self.scheduler_address,
                    "WORKER_WORKER_ID": host.name,
                    "WORKER_LEASE_PUBLIC_KEYS": public,
                },
            )
        self._spawn(
            "router",
            ["services.router"],
            base
            | {
                "ROUTER_LISTEN": f"{router}:50051",
                "ROUTER_HTTP_LISTEN": f"{router}:8000",
                "ROUTER_METRICS_LISTEN": f"{router}:9091",
                "ROUTER_SCHEDULER_ADDRESS": self.scheduler_address,
                "ROUTER_ALLOW_ANONYMOUS": "false",
            },
        )
        self.wait_ready(timeout_s)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.procs[name] = self.hosts[name].spawn(args, env, self.log_dir / f"{name}.log")

    def wait_ready(self, timeout_s: float) -> None:
        """Until the router lists the model with every worker ready."""
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.router_address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            while time.monotonic() < deadline:
                try:
                    models = stub.ListModels(types_pb2.ListModelsRequest(), metadata=KEY, timeout=2)
                    ready = {m.model_id: m.ready_workers for m in models.models}
                    if ready.get(MODEL_ID, 0) >= self.workers:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"the fleet did not start:\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)


def story(i: int, tokens: int = TOKENS) -> types_pb2.GenerateRequest:
    return types_pb2.GenerateRequest(model_id=MODEL_ID, prompt=f"story {i}", max_tokens=tokens)


async def timed_stream(stub, i: int) -> tuple[str, float, str]:
    """A stream's text, the longest silence between its messages, and its last worker."""
    texts, last, longest, worker = [], time.monotonic(), 0.0, ""
    async for message in stub.Generate(story(i), metadata=KEY, timeout=120):
        now = time.monotonic()
        longest, last = max(longest, now - last), now
        if message.HasField("delta"):
            texts.append(message.delta.text)
        else:
            worker = message.summary.worker_id
    return "".join(texts), longest, worker


async def run_streams(fleet: NetFleet, during=None) -> list[tuple[str, float, str]]:
    """STREAMS streams at once through the fleet's router; `during()` runs meanwhile."""
    async with grpc.aio.insecure_channel(fleet.router_address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        streams = [asyncio.create_task(timed_stream(stub, i)) for i in range(STREAMS)]
        if during is not None:
            await during()
        return await asyncio.gather(*streams)


def scheduler_metric(fleet: NetFleet, name: str, suffix: str = "_total") -> dict[str, float]:
    """A counter of the scheduler's /metrics (a gauge: `suffix=""`), by its label values."""
    scheduler = fleet.hosts["scheduler"].address
    text = urllib.request.urlopen(f"http://{scheduler}:9092/metrics", timeout=5).read().decode()
    pattern = rf"^{name}{suffix}\{{[^=]*=\"([^\"]*)\"\}} (\S+)$"
    return {label: float(value) for label, value in re.findall(pattern, text, re.MULTILINE)}
