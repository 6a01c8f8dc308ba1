from dataclasses import replace

from services.common.unreachable import UNREACHABLE_S, UnreachableWorkers
from services.scheduler.core.leases import LeaseTable
from services.scheduler.core.liveness import SilenceBounds
from services.scheduler.core.types import ModelSlots, PendingRequest, Priority, WorkerState
from tests.factories import Clock


def req(rid: str, model: str = "m", kv: int = 0) -> PendingRequest:
    return PendingRequest(rid, model, Priority.MEDIUM, "t", 0.0, prompt_tokens=kv)


def table_with(*workers: tuple[str, int]) -> LeaseTable:
    table = LeaseTable()
    for worker_id, slots in workers:
        table.upsert_worker(worker_id, f"{worker_id}:1", "cpu-0", [ModelSlots("m", slots, True)], 0)
    return table


def test_grants_until_slots_run_out_then_refuses():
    table = table_with(("w1", 2))
    assert table.grant(req("r1"), 0) is not None
    assert table.grant(req("r2"), 0) is not None
    assert table.grant(req("r3"), 0) is None
    assert "m" not in table.room()


def test_release_frees_exactly_once():
    table = table_with(("w1", 1))
    lease = table.grant(req("r1"), 0)
    assert table.release(lease.lease_id) == lease
    assert table.release(lease.lease_id) is None
    assert table.worker("w1").models["m"].active == 0
    assert table.grant(req("r2"), 0) is not None


def test_least_loaded_spreads_leases():
    table = table_with(("w1", 4), ("w2", 4))
    workers = [table.grant(req(f"r{i}"), 0).worker_id for i in range(4)]
    assert workers.count("w1") == 2 and workers.count("w2") == 2


def test_removing_a_worker_reclaims_its_leases():
    table = table_with(("w1", 2), ("w2", 2))
    leases = [table.grant(req(f"r{i}"), 0) for i in range(4)]
    reclaimed = table.remove_worker("w1")
    assert {lease.worker_id for lease in reclaimed} == {"w1"}
    assert len(reclaimed) == 2
    assert table.active_leases() == 2
    for lease in reclaimed:
        assert table.release(lease.lease_id) is None  # already freed by the removal
    assert sum(1 for lease in leases if table.release(lease.lease_id)) == 2


def test_draining_or_unready_workers_take_no_leases():
    table = table_with(("w1", 2))
    table.heartbeat("w1", 1.0, WorkerState.DRAINING)
    assert table.grant(req("r1"), 0) is None
    table.upsert_worker("w2", "w2:1", "cpu-0", [ModelSlots("m", 2, ready=False)], 0)
    assert table.grant(req("r1"), 0) is None
    assert table.serves("m")  # a loading model still counts as served


def test_reregistration_keeps_lease_counts():
    table = table_with(("w1", 2))
    table.grant(req("r1"), 0)
    table.upsert_worker("w1", "w1:1", "cpu-0", [ModelSlots("m", 2, True)], 5)
    assert table.worker("w1").models["m"].active == 1
    assert table.total_slots() == 2


def test_silent_workers_are_suspect_first_then_dead():
    table = table_with(("w1", 1), ("w2", 1))  # both beat at 0
    table.heartbeat("w2", 5.0, WorkerState.READY)
    bounds = SilenceBounds(suspect_after_s=3.0, dead_after_s=6.0, closed_dead_after_s=3.0)
    assert table.silent_workers(now=5.0, bounds=bounds) == []
    assert table.worker("w1").suspect and not table.worker("w2").suspect
    assert table.silent_workers(now=6.5, bounds=bounds) == ["w1"]


def test_a_worker_whose_session_closed_is_removed_sooner_unless_it_registers_again():
    table = table_with(("w1", 1), ("w2", 1), ("w3", 1))
    bounds = SilenceBounds(suspect_after_s=7.0, dead_after_s=14.0, closed_dead_after_s=3.0)
    for worker_id in ("w1", "w2", "w3"):
        table.heartbeat(worker_id, 5.0, WorkerState.READY)
    table.session_closed("w1", 6.0)
    table.session_closed("w2", 6.0)
    assert table.worker("w1").suspect  # no new lease from the close on
    table.upsert_worker("w2", "w2:1", "cpu-0", [ModelSlots("m", 1, True)], 7.0)  # registers
    assert table.silent_workers(now=8.9, bounds=bounds) == []
    assert table.silent_workers(now=9.1, bounds=bounds) == ["w1"]  # 3 s after its close
    assert not table.worker("w3").suspect  # quiet, its session open: heard 4.1 s ago


def test_kv_budget_bounds_leases_beyond_slots():
    table = LeaseTable()
    table.upsert_worker("w1", "w1:1", "cpu-0", [ModelSlots("m", 8, True, kv_capacity=1000)], 0)
    first = table.grant(req("a", kv=600), 0)
    assert first is not None
    assert table.grant(req("b", kv=600), 0) is None  # 1200 > 1000 although slots are free
    assert table.grant(req("c", kv=400), 0) is not None
    assert table.room() == {"m": 0}  # a slot is free but no KV token is
    table.release(first.lease_id)
    assert table.room()["m"] == 600
    assert table.worker("w1").models["m"].kv_reserved == 400


def test_a_lone_lease_always_fits_the_kv_budget():
    table = LeaseTable()
    table.upsert_worker("w1", "w1:1", "cpu-0", [ModelSlots("m", 2, True, kv_capacity=100)], 0)
    assert table.grant(req("big", kv=500), 0) is not None


def test_a_worker_its_router_cannot_reach_is_used_only_when_no_other_has_room():
    for policy in ("least_loaded", "kv_aware", "round_robin"):
        table = LeaseTable.placing_by(policy)
        for worker_id in ("w1", "w2"):
            table.upsert_worker(worker_id, f"{worker_id}:1", "cpu-0", [ModelSlots("m", 2, True)], 0)
        away = replace(req("r0"), unreachable=("w1",))
        assert {table.grant(replace(away, request_id=f"r{i}"), 0).worker_id for i in range(2)} == {
            "w2"
        }
        assert table.grant(away, 0).worker_id == "w1"  # w2 is full: better tried than refused


def test_unreachable_workers_are_named_until_they_answer_or_time_passes():
    clock = Clock()
    unreachable = UnreachableWorkers(clock)
    unreachable.failed("w1")
    clock.now += 1
    unreachable.failed("w2")
    assert unreachable.now() == ["w2", "w1"]
    unreachable.answered("w2")
    assert unreachable.now() == ["w1"]
    clock.now += UNREACHABLE_S
    assert unreachable.now() == []
