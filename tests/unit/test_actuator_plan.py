"""The local actuator's plan: which worker processes to start and drain."""

from services.actuator.plan import Devices, Start, Stop, WorkerProcess, reconcile


def proc(wid: str, model: str = "m", device: str = "cpu", **kw) -> WorkerProcess:
    return WorkerProcess(wid, model, device, kw.pop("started_at", 0.0), **kw)


def test_starts_the_missing_workers_one_per_free_gpu():
    actions = reconcile({"m": 3}, [proc("a", device="gpu-0")], Devices((0, 1, 2, 3), 1))
    assert actions == [Start("m", "gpu-1"), Start("m", "gpu-2")]


def test_without_a_gpu_workers_take_cpu_slots_and_stop_when_none_is_left():
    assert reconcile({"m": 4}, [], Devices((), 2)) == [Start("m", "cpu"), Start("m", "cpu")]


def test_with_every_gpu_taken_a_real_model_falls_back_to_the_cpu_only_if_allowed():
    running = [proc("a", device="gpu-0")]
    assert reconcile({"m": 2}, running, Devices((0,), 1)) == []
    assert reconcile({"m": 2}, running, Devices((0,), 1, cpu_fallback=True)) == [Start("m", "cpu")]


def test_simulated_models_take_cpu_slots_even_on_a_gpu_host():
    actions = reconcile({"sim": 1, "real": 1}, [], Devices((0,), 1), frozenset({"sim"}))
    assert actions == [Start("real", "gpu-0"), Start("sim", "cpu")]


def test_scarce_devices_go_to_models_with_no_worker_first_then_in_turn():
    running = [proc("a", "busy", "gpu-0")]
    actions = reconcile({"busy": 3, "cold": 1, "other": 2}, running, Devices((0, 1, 2, 3), 0))
    assert actions == [Start("cold", "gpu-1"), Start("other", "gpu-2"), Start("busy", "gpu-3")]


def test_drains_the_workers_with_fewest_leases_newest_first():
    running = [
        proc("old-busy", active_leases=3, started_at=1.0),
        proc("old-idle", active_leases=0, started_at=2.0),
        proc("new-idle", active_leases=0, started_at=3.0),
    ]
    assert reconcile({"m": 1}, running, Devices((), 4)) == [Stop("new-idle"), Stop("old-idle")]


def test_a_stopping_worker_is_not_counted_but_keeps_its_device():
    running = [proc("a", device="gpu-0", stopping=True)]
    assert reconcile({"m": 1}, running, Devices((0, 1), 0)) == [Start("m", "gpu-1")]
    assert reconcile({"m": 1}, running, Devices((0,), 0)) == []


def test_models_held_back_or_unknown_to_the_scheduler_are_left_alone():
    running = [proc("a", "gone")]
    assert reconcile({"m": 1}, running, Devices((), 4), held_back=frozenset({"m"})) == []


def test_a_real_model_gets_no_second_cpu_worker_but_a_simulated_one_does():
    cpu = Devices((), 4, cpu_per_model=1)
    running = [proc("a", device="cpu")]
    assert reconcile({"m": 2}, running, cpu) == []  # the second would share the same cores
    sims = reconcile({"sim": 3}, [], cpu, frozenset({"sim"}))
    assert sims == [Start("sim", "cpu")] * 3  # simulated models use no compute
    assert reconcile({"m": 2}, [], Devices((0,), 4, cpu_fallback=True, cpu_per_model=1)) == [
        Start("m", "gpu-0"),
        Start("m", "cpu"),
    ]


def test_cpu_workers_of_a_real_model_are_bounded_by_the_cores_and_their_threads():
    from services.actuator.config import cpu_workers_for

    assert cpu_workers_for(cores=2, threads_per_worker=0) == 1  # torch's default: every core
    assert cpu_workers_for(cores=64, threads_per_worker=0) == 1
    assert cpu_workers_for(cores=64, threads_per_worker=8) == 8
    assert cpu_workers_for(cores=2, threads_per_worker=4) == 1
    bounded = Devices((), 16, cpu_per_model=cpu_workers_for(cores=16, threads_per_worker=8))
    started = reconcile({"m": 5}, [], bounded)
    assert started == [Start("m", "cpu"), Start("m", "cpu")]  # 16 cores hold two 8-thread workers
