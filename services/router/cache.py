"""A response cache for deterministic requests (greedy decoding), per tenant.

LRU with a size bound and a time to live; pure, with an injected clock. Keys include the
tenant, so one tenant never sees another's entries. A hit replays the stored stream.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from inference.v1 import types_pb2


class ResponseCache:
    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, list[bytes]]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def key(self, tenant: str, request: types_pb2.GenerateRequest) -> bytes | None:
        """The cache key of a deterministic request; None for sampled ones (not cached)."""
        s = request.sampling
        if not self.enabled or (s.HasField("temperature") and s.temperature > 0):
            return None
        keyed = types_pb2.GenerateRequest()
        keyed.CopyFrom(request)
        keyed.request_id = ""
        keyed.priority = types_pb2.PRIORITY_UNSPECIFIED  # priority does not change the text
        keyed.sampling.ClearField("seed")  # greedy ignores the seed
        return tenant.encode() + b"\0" + keyed.SerializeToString(deterministic=True)

    def get(self, key: bytes, request_id: str) -> list[types_pb2.GenerateResponse] | None:
        """The stored stream, stamped with `request_id`; None on a miss or an expired entry."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, messages = entry
        if self._clock() - stored_at > self.ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        replay = [types_pb2.GenerateResponse.FromString(m) for m in messages]
        for message in replay:
            message.request_id = request_id
            if message.HasField("summary"):  # nothing ran for this request
                s = message.summary
                s.inference_time_ms = s.queue_time_ms = s.time_to_first_token_ms = 0.0
        return replay

    def put(self, key: bytes, messages: list[types_pb2.GenerateResponse]) -> None:
        self._entries[key] = (self._clock(), [m.SerializeToString() for m in messages])
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
