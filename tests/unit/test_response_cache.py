from inference.v1 import types_pb2

from services.router.cache import ResponseCache


def stream(text: str) -> list[types_pb2.GenerateResponse]:
    return [
        types_pb2.GenerateResponse(request_id="orig", delta=types_pb2.TokenDelta(text=text)),
        types_pb2.GenerateResponse(
            request_id="orig",
            summary=types_pb2.GenerationSummary(completion_tokens=1, inference_time_ms=50.0),
        ),
    ]


def greedy(prompt: str = "hi", **fields) -> types_pb2.GenerateRequest:
    return types_pb2.GenerateRequest(model_id="m", prompt=prompt, **fields)


def test_hits_replay_the_stream_for_the_same_tenant_only():
    now = [0.0]
    cache = ResponseCache(max_entries=10, ttl_s=60, clock=lambda: now[0])
    key = cache.key("a", greedy(request_id="r1", priority=1))
    cache.put(key, stream("Hello"))
    again = cache.key("a", greedy(request_id="r2", priority=3))
    assert again == key  # request id and priority do not matter
    replay = cache.get(again, "r2")
    assert [m.request_id for m in replay] == ["r2", "r2"]
    assert replay[0].delta.text == "Hello" and replay[1].summary.inference_time_ms == 0
    assert cache.get(cache.key("b", greedy()), "r3") is None  # another tenant: a miss
    now[0] = 61
    assert cache.get(key, "r4") is None  # expired


def test_sampled_requests_are_not_cached_and_the_size_is_bounded():
    cache = ResponseCache(max_entries=2, ttl_s=60, clock=lambda: 0.0)
    sampled = greedy(sampling=types_pb2.SamplingParams(temperature=0.7))
    assert cache.key("a", sampled) is None
    keys = [cache.key("a", greedy(f"p{i}")) for i in range(3)]
    for key in keys:
        cache.put(key, stream("x"))
    assert cache.get(keys[0], "r") is None and cache.get(keys[2], "r") is not None


def test_off_by_default():
    assert ResponseCache(0, 60, lambda: 0.0).key("a", greedy()) is None
