"""vLLM's KV-cache events in our block names, so the scheduler indexes a worker on vLLM as it
indexes one on the embedded engine.

vLLM publishes, on a ZMQ socket, batches of `BlockStored` (its hashes of the blocks, their
parent's, the blocks' token ids, its block size), `BlockRemoved` and `AllBlocksCleared`. Its
hashes are not ours (services/common/prefix_blocks.py: a chain over 16-token blocks), but the
token ids let us compute ours: a vLLM block of `block_size` tokens is `block_size / 16` of our
blocks, chained from ours of its parent. The result is kept in a `PrefixCache` with no payloads
and no eviction of its own (vLLM evicts and says so), whose net changes the worker's heartbeat
reports like any engine's.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from services.common.prefix_blocks import BLOCK_TOKENS, block_hashes
from services.gpu_worker.engines.prefix_cache import PrefixCache

log = logging.getLogger(__name__)

UNBOUNDED_TOKENS = 1 << 40  # vLLM bounds its cache itself
POLL_MS = 200  # how often the listener checks whether it was stopped


class KvEventMirror:
    """Listens to one vLLM engine's KV events and keeps `cache` in our block names."""

    def __init__(self) -> None:
        import zmq

        # vLLM's publisher connects to a host:port endpoint (it binds only wildcards): this
        # side binds, on a free loopback port, before vLLM starts
        self._socket = zmq.Context.instance().socket(zmq.SUB)
        port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.cache = PrefixCache(UNBOUNDED_TOKENS)
        self._ours: dict[Any, list[int]] = {}  # vLLM block hash → our hashes of its tokens
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="vllm-kv-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if not self._thread.is_alive():  # never started: its socket is closed here
            self._socket.close(linger=0)

    def apply(self, events: list[Any]) -> None:
        """Takes one batch of vLLM's events, in order."""
        from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

        for event in events:
            if isinstance(event, BlockStored):
                self._stored(event)
            elif isinstance(event, BlockRemoved):
                for block in event.block_hashes:
                    self.cache.remove(self._ours.pop(block, ()))
            elif isinstance(event, AllBlocksCleared):
                self._ours.clear()
                self.cache.clear()

    def _stored(self, event: Any) -> None:
        size = event.block_size
        if size % BLOCK_TOKENS:
            return  # not a whole number of our blocks: nothing to name
        parent: int | None = None
        if event.parent_block_hash is not None:
            chain = self._ours.get(event.parent_block_hash)
            if not chain:
                return  # its parent was never heard of (before we listened): no chain
            parent = chain[-1]
        for i, block in enumerate(event.block_hashes):
            ids = event.token_ids[i * size : (i + 1) * size]
            ours = block_hashes(ids, limit=size // BLOCK_TOKENS, parent_hash=parent)
            if len(ours) * BLOCK_TOKENS != size:
                return
            self._ours[block] = ours
            self.cache.store(ours, [None] * len(ours))
            parent = ours[-1]

    def _listen(self) -> None:
        """The listener thread: every batch, until stopped; a batch it cannot read is
        logged and skipped (the next registration sends the whole set anyway)."""
        import msgspec
        from vllm.distributed.kv_events import KVEventBatch

        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        subscriber = self._socket
        try:
            while not self._stopped.is_set():
                if not subscriber.poll(POLL_MS):
                    continue
                _topic, _seq, payload = subscriber.recv_multipart()
                try:
                    self.apply(decoder.decode(payload).events)
                except Exception:
                    log.exception("a batch of vLLM's KV events could not be read; skipped")
        finally:
            subscriber.close(linger=0)
