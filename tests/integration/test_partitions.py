"""Hosts that fail quietly (issue 27), on the multi-host test bed (bench/netbed.py): the
scheduler, the router and two workers each in a network namespace of its own, and a worker's
host cut off silently with nftables (every packet dropped, nothing reset)."""

import asyncio

import pytest

from bench.net_fleet import STREAMS, TOKENS, NetFleet, run_streams, scheduler_metric
from bench.netbed import NetBed, available
from tests.service.test_scheduling import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netbed,
    pytest.mark.skipif(bool(available()), reason=f"network namespaces: {available()}"),
]


@pytest.fixture
def fleet(tmp_path):
    bed = NetBed.create()
    running = NetFleet(bed, tmp_path / "logs", workers=2)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        bed.close()


def registered_workers(fleet) -> float:
    """Workers the scheduler has registered, in any state."""
    return sum(scheduler_metric(fleet, "inference_scheduler_workers", suffix="").values())


def lost_leases(fleet) -> float:
    """Leases the scheduler recorded as ended early (resubmitted by a router)."""
    return sum(scheduler_metric(fleet, "inference_scheduler_leases_lost").values())


def served_tokens(fleet) -> float:
    """Tokens the scheduler has charged its tenants for, as their workers reported them."""
    return sum(scheduler_metric(fleet, "inference_scheduler_served_tokens").values())


def cut_after_a_second(host, peer=None):
    """What `run_streams` runs meanwhile: `host` cut off (from `peer` only, if given)."""

    async def cut() -> None:
        await asyncio.sleep(1.0)
        host.cut(peer)

    return cut


def texts(results) -> list[str]:
    return [text for text, _, _ in results]


async def test_a_silent_worker_loses_no_stream_and_every_stream_keeps_its_text(fleet):
    undisturbed = texts(await run_streams(fleet))
    cut = fleet.worker_hosts[1]
    try:
        results = await run_streams(fleet, cut_after_a_second(cut))
    finally:
        cut.heal()
    assert texts(results) == undisturbed
    # every stream ended on the worker still reachable (how long they were silent is
    # measured by bench.partitions, not asserted here)
    assert all(worker != cut.name for _, _, worker in results), fleet.logs()


async def test_a_blip_shorter_than_the_detection_bound_moves_nothing(fleet):
    undisturbed = texts(await run_streams(fleet))
    before = lost_leases(fleet)
    blipped = fleet.worker_hosts[1]

    async def blip():
        await asyncio.sleep(1.0)
        blipped.cut()
        await asyncio.sleep(2.0)
        blipped.heal()

    results = await run_streams(fleet, blip)
    assert texts(results) == undisturbed
    assert lost_leases(fleet) == before  # no lease ended early: nothing resumed


async def test_a_worker_its_router_cannot_reach_is_left_out_of_that_routers_requests(fleet):
    """One way: the scheduler still hears the worker, the router's calls to it go unanswered.
    Its streams move; the router's next requests name it unreachable and go elsewhere, so no
    lease is lost on it again while it stays cut."""
    undisturbed = texts(await run_streams(fleet))
    cut = fleet.worker_hosts[1]
    try:
        moved = await run_streams(fleet, cut_after_a_second(cut, fleet.hosts["router"]))
        lost = lost_leases(fleet)
        later = await run_streams(fleet)
        assert lost_leases(fleet) == lost, fleet.logs()
    finally:
        cut.heal()
    assert texts(moved) == texts(later) == undisturbed
    assert all(worker != cut.name for _, _, worker in moved + later)


async def test_a_worker_the_scheduler_loses_still_finishes_the_routers_streams(fleet):
    """The other way: the worker's host is cut from the scheduler only. The router still
    streams from it, so no stream is disturbed; the scheduler declares the worker dead and, when
    the link heals, the worker registers again, tells the ends of the leases that ran on
    meanwhile (their tokens are charged then, as they really happened), and serves once more."""
    before = served_tokens(fleet)
    undisturbed = texts(await run_streams(fleet))
    await wait_until(lambda: served_tokens(fleet) - before == STREAMS * TOKENS)
    before = served_tokens(fleet)
    cut = fleet.worker_hosts[1]
    try:
        results = await run_streams(fleet, cut_after_a_second(cut, fleet.hosts["scheduler"]))
        # the scheduler declares it dead (its leases end there as lost)
        await wait_until(lambda: registered_workers(fleet) == 1, timeout_s=10)
        assert served_tokens(fleet) - before < STREAMS * TOKENS  # the cut one's not heard
    finally:
        cut.heal()
    assert texts(results) == undisturbed, fleet.logs()
    await asyncio.to_thread(fleet.wait_ready, 30)  # both workers ready again
    await wait_until(lambda: served_tokens(fleet) - before == STREAMS * TOKENS, timeout_s=10)
    assert sum(scheduler_metric(fleet, "inference_scheduler_leases_reconciled").values()) > 0
    assert texts(await run_streams(fleet)) == undisturbed
