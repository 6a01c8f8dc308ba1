"""Each service's /metrics endpoint, scraped while requests flow."""

import asyncio
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.test_scheduling import wait_until
from tests.stack import request, sim_model, start_stack

SERVED = "inference_scheduler_served_tokens_total"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def small_stack():
    stack = await start_stack([sim_model("sim-one", slots=1, step_ms=5.0)], queue_capacity=1)
    yield stack
    await stack.close()


async def test_series_move_when_requests_flow(small_stack):
    ports = await _serve_shed_and_refuse(small_stack)
    _assert_router_series(scrape(ports[0]))
    _assert_scheduler_series(scrape(ports[1]), small_stack.workers[0].worker_id)
    _assert_worker_series(scrape(ports[2]))


async def _serve_shed_and_refuse(stack) -> tuple[int, int, int]:
    """3 requests served (67 tokens), 1 shed (a queue of one is full), 1 for an unknown
    model; returns the router's, scheduler's and worker's metrics ports once the series
    have caught up."""
    router_port = stack.router.metrics_endpoint.port
    scheduler_port = stack.scheduler.metrics_endpoint.port
    worker_port = stack.workers[0].metrics_endpoint.port
    assert all((router_port, scheduler_port, worker_port))
    stub = stack.router_stub()

    await stub.Infer(request("sim-one", max_tokens=6))
    blocker = asyncio.ensure_future(stub.Infer(request("sim-one", max_tokens=60)))
    core = stack.scheduler.coordinator.state
    await wait_until(lambda: core.active_leases() == 1)
    queued = asyncio.ensure_future(stub.Infer(request("sim-one", max_tokens=1)))
    await wait_until(lambda: sum(core.queue_depths().values()) == 1)
    with pytest.raises(grpc.aio.AioRpcError):  # queue of one is full: shed
        await stub.Infer(request("sim-one", max_tokens=1))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Infer(request("no-such-model"))
    await asyncio.gather(blocker, queued)
    worker_id = stack.workers[0].worker_id
    await wait_until(  # a heartbeat and a sweep refresh the gauges
        lambda: (
            value(scrape(scheduler_port), "inference_scheduler_workers", state="ready") == 1
            and value(
                scrape(scheduler_port),
                "inference_fleet_gpu_memory_total_bytes",
                worker=worker_id,
                gpu_id="cpu-0",
            )
            > 0
            and value(scrape(worker_port), "inference_worker_busy_seconds_total", model="sim-one")
            > 0
            # each lease's end (with its tokens) reaches the scheduler just after its stream
            and value(scrape(scheduler_port), SERVED, tenant="anonymous") == 67
        )
    )
    return router_port, scheduler_port, worker_port


def _assert_router_series(router) -> None:
    assert (
        value(router, "inference_router_requests_total", rpc="Infer", model="sim-one", code="OK")
        == 3
    )
    assert (
        value(
            router,
            "inference_router_requests_total",
            rpc="Infer",
            model="sim-one",
            code="RESOURCE_EXHAUSTED",
        )
        == 1
    )
    assert (
        value(
            router,
            "inference_router_requests_total",
            rpc="Infer",
            model="_unknown",
            code="NOT_FOUND",
        )
        == 1
    )
    assert value(router, "inference_router_generated_tokens_total", model="sim-one") == 67
    assert value(router, "inference_router_time_to_first_token_seconds_count", model="sim-one") == 3
    assert (
        value(router, "inference_router_inter_token_latency_seconds_count", model="sim-one") == 64
    )


def _assert_scheduler_series(scheduler, worker_id: str) -> None:
    assert (
        value(
            scheduler,
            "inference_scheduler_shed_total",
            tenant="anonymous",
            priority="medium",
            reason="queue_full",
        )
        == 1
    )
    assert value(scheduler, "inference_scheduler_queue_wait_seconds_count", priority="medium") == 3
    assert value(scheduler, "inference_scheduler_served_tokens_total", tenant="anonymous") == 67
    assert value(scheduler, "inference_scheduler_queue_depth", priority="high") == 0
    assert value(scheduler, "inference_scheduler_workers", state="ready") == 1
    assert value(scheduler, "inference_scheduler_tenant_fairness_jain") == 1.0
    assert (
        value(scheduler, "inference_fleet_gpu_memory_total_bytes", worker=worker_id, gpu_id="cpu-0")
        > 0
    )


def _assert_worker_series(worker) -> None:
    assert value(worker, "inference_worker_generated_tokens_total", model="sim-one") == 67
    assert value(worker, "inference_worker_gpu_memory_total_bytes", gpu_id="cpu-0") > 0
    assert value(worker, "inference_worker_kv_cache_capacity_tokens", model="sim-one") > 0
    assert value(worker, "inference_worker_busy_seconds_total", model="sim-one") > 0
    assert ("inference_worker_model_load_seconds", (("model", "sim-one"),)) in worker
