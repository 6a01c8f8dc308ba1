from inference.v1 import scheduler_pb2, types_pb2

from services.gpu_worker.quiet_heartbeats import QuietHeartbeats


def beat(active: int = 0, utilization: float = 0.0, stored=()) -> scheduler_pb2.WorkerHeartbeat:
    return scheduler_pb2.WorkerHeartbeat(
        sequence=7,
        device=types_pb2.DeviceTelemetry(utilization_percent=utilization),
        models=[types_pb2.WorkerModel(max_slots=4, active_sequences=active)],
        healthy=True,
        prefix_caches=[types_pb2.PrefixCacheReport(model_id="m", stored=stored)],
    )


def test_an_unchanged_report_goes_once_in_quiet_plus_one_intervals():
    quiet = QuietHeartbeats()
    quiet.restart(2)
    sent = [quiet.worth_sending(beat(utilization=n)) for n in range(7)]  # telemetry moves
    assert sent == [True, False, False, True, False, False, True]


def test_a_change_goes_at_once_and_so_does_a_new_sessions_first_and_a_forced_one():
    quiet = QuietHeartbeats()
    quiet.restart(5)
    assert quiet.worth_sending(beat())
    assert not quiet.worth_sending(beat())
    assert quiet.worth_sending(beat(active=1))  # the report changed
    assert not quiet.worth_sending(beat(active=1))
    assert quiet.worth_sending(beat(active=1), forced=True)
    assert quiet.worth_sending(beat(active=1, stored=[42]))  # prefix changes always go
    quiet.restart(5)  # a new session
    assert quiet.worth_sending(beat(active=1))


def test_quiet_zero_sends_every_heartbeat():
    quiet = QuietHeartbeats()
    assert all(quiet.worth_sending(beat()) for _ in range(3))
