import pytest

from services.common.errors import ResourceExhausted
from services.router.ratelimit import Limits, RateLimiter, TokenBucket
from tests.factories import Clock


def test_bucket_allows_the_burst_then_refills_at_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=4, clock=clock)
    assert [bucket.take(1) for _ in range(4)] == [0, 0, 0, 0]
    assert bucket.take(1) == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.take(1) == 0


def test_requests_per_second_limit_gives_a_retry_hint():
    clock = Clock()
    limiter = RateLimiter(lambda t: Limits(requests_per_s=1, burst_requests=2), 1, clock)
    limiter.admit("a", 0).finish(0)
    limiter.admit("a", 0).finish(0)
    with pytest.raises(ResourceExhausted) as info:
        limiter.admit("a", 0)
    assert info.value.retry_after_ms == 1000
    limiter.admit("b", 0)  # another tenant is still served
    clock.now = 1.0
    limiter.admit("a", 0)


def test_tokens_are_reserved_then_corrected_to_what_was_used():
    clock = Clock()
    limiter = RateLimiter(lambda t: Limits(tokens_per_s=100, burst_tokens=100), 1, clock)
    first = limiter.admit("a", 80)  # prompt + max_tokens reserved
    with pytest.raises(ResourceExhausted):
        limiter.admit("a", 80)
    first.finish(30)  # only 30 used: 50 come back
    limiter.admit("a", 60).finish(60)


def test_concurrent_streams_cap_and_each_reservation_settles_once():
    limiter = RateLimiter(lambda t: Limits(max_concurrent_streams=1), 1, Clock())
    held = limiter.admit("a", 0)
    with pytest.raises(ResourceExhausted):
        limiter.admit("a", 0)
    held.finish(None)
    held.finish(None)
    limiter.admit("a", 0)
    with pytest.raises(ResourceExhausted):
        limiter.admit("a", 0)


def test_several_routers_each_enforce_their_share():
    share = Limits(requests_per_s=10, burst_requests=10, max_concurrent_streams=4).share(2)
    assert share.requests_per_s == 5 and share.burst_requests == 5
    assert share.max_concurrent_streams == 2


def test_use_beyond_the_reservation_is_always_charged():
    clock = Clock()
    limiter = RateLimiter(lambda t: Limits(tokens_per_s=10, burst_tokens=100), 1, clock)
    limiter.admit("a", 90).finish(150)  # used 60 more than reserved: the bucket goes negative
    clock.now = 4.0  # 40 tokens refilled, still below zero
    with pytest.raises(ResourceExhausted):
        limiter.admit("a", 1)
