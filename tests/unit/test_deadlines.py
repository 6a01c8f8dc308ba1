"""The late sweep: requests that cannot start before their deadline at the measured service
rate leave the queue, looking only at requests whose deadline is near."""

from services.scheduler.core import deadlines
from services.scheduler.core.queue import RequestQueue
from services.scheduler.core.rates import EventRates
from services.scheduler.core.types import PendingRequest, Priority
from tests.factories import Clock

NO_ROOM: set[str] = set()


def eight_per_second(clock: Clock) -> EventRates:
    rates = EventRates(30.0, clock)
    for _ in range(8):
        rates.record("m")
        clock.now += 0.125
    assert rates.rate("m") == 8.0
    return rates


def sweep(queue: RequestQueue, rates: EventRates, clock: Clock) -> list[str]:
    late = deadlines.take_late(queue, NO_ROOM, lambda model: True, rates, clock.now)
    return [r.request_id for r in late]


def test_requests_too_far_back_to_start_in_time_are_dropped_the_rest_stay():
    clock = Clock(0.0)
    rates = eight_per_second(clock)
    queue = RequestQueue(1_000)
    queue.push(PendingRequest("high", "m", Priority.HIGH, "t", clock.now))
    for i in range(100):  # at 8/s, r40 has 41 ahead: it cannot start within 5 s
        deadline = clock.now + 5.0
        queue.push(PendingRequest(f"r{i}", "m", Priority.MEDIUM, "t", clock.now, deadline=deadline))
    assert sweep(queue, rates, clock) == [f"r{i}" for i in range(40, 100)]
    assert len(queue) == 41


def test_a_resubmitted_request_keeps_its_early_place_and_is_not_dropped():
    clock = Clock(10.0)
    rates = eight_per_second(clock)
    queue = RequestQueue(1_000)
    for i in range(100):
        queue.push(PendingRequest(f"r{i}", "m", Priority.MEDIUM, "t", clock.now))
    back = PendingRequest("back", "m", Priority.MEDIUM, "t", 1.0, deadline=clock.now + 1.0)
    queue.push(back, force=True)  # arrived long before the others: first in line
    assert sweep(queue, rates, clock) == []


def test_one_sweep_looks_at_a_bounded_number_of_requests_and_later_sweeps_go_on():
    clock = Clock(0.0)
    rates = eight_per_second(clock)
    queue = RequestQueue(10_000)
    queue.push(PendingRequest("first", "m", Priority.HIGH, "t", clock.now))
    count = 3 * deadlines.LATE_CHECKS
    for i in range(count):  # every one at least 1,000 requests back, with 1 s to go
        deadline = clock.now + 1.0
        queue.push(PendingRequest(f"r{i}", "m", Priority.LOW, "t", clock.now, deadline=deadline))
    for i in range(1_000):
        queue.push(PendingRequest(f"h{i}", "m", Priority.HIGH, "t", clock.now))
    dropped = [sweep(queue, rates, clock) for _ in range(4)]
    assert [len(d) for d in dropped] == [deadlines.LATE_CHECKS] * 3 + [0]
