"""Where one more lease fits, per model, kept current as leases and workers change.

Per model two heaps of the workers that take leases for it now (accepting, model ready, a
slot free): one by KV room (the most KV tokens one more lease may reserve: does a request
fit anywhere?) and one by load (the least loaded worker, the default placement). A worker is
indexed again when its slots, its leases or its state change (`touch`), an O(models of the
worker × log W) step that also refreshes the model's room (`rooms`, read as a dict); entries
it had before are stale and skipped when they reach the top. So a decision reads the room in
O(1) and finds the least loaded worker in O(log W) instead of scanning the model's workers,
and a heartbeat that changes nothing costs nothing here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from heapq import heappop

from services.scheduler.core import stale_heaps
from services.scheduler.core.types import WorkerRecord


class RoomIndex:
    def __init__(self, worker: Callable[[str], WorkerRecord | None]) -> None:
        self._worker = worker
        self._versions: dict[tuple[str, str], int] = {}  # (worker, model) → last indexed
        # model → [(-kv_room, version, key)] and [(-free, -kv_room, leases, version, key)],
        # key = (worker, model): heaps with lazy deletion (core.stale_heaps)
        self._by_room: dict[str, list] = {}
        self._by_load: dict[str, list] = {}
        # model → the most KV tokens one more lease may reserve on any worker; a model is
        # absent when no worker has a free slot for it (kept current, read as a Mapping)
        self.rooms: dict[str, float] = {}
        self._stamp = 0  # versions of index entries: the last one given

    def touch(self, worker: WorkerRecord) -> None:
        """Indexes a worker again for each of its models."""
        accepts = worker.accepts_leases
        for model_id, slots in worker.models.items():
            self._index(worker, model_id, slots.kv_room() if accepts else -1)

    def forget(self, worker_id: str, models: Iterator[str]) -> None:
        """A worker left, or stopped serving these models: its entries become stale."""
        for model_id in models:
            self._versions.pop((worker_id, model_id), None)
            self._refresh(model_id)

    def least_loaded(self, model_id: str, kv_tokens: int, avoid: str) -> WorkerRecord | None:
        """The worker with the most free slots, then KV room, then fewest leases, if it fits
        `kv_tokens` and is not `avoid`; None otherwise (the caller then looks further)."""
        heap = self._by_load.get(model_id)
        while heap:
            entry = heap[0]
            key = entry[4]
            if self._versions.get(key) != entry[3]:
                heappop(heap)
                continue
            worker_id = key[0]
            fits = -entry[1] >= kv_tokens and worker_id != avoid
            return self._worker(worker_id) if fits else None
        return None

    def _index(self, worker: WorkerRecord, model_id: str, room: float) -> None:
        """Indexes one model of a worker with its KV room (-1: it takes no lease for it)."""
        key = (worker.worker_id, model_id)
        version = self._stamp = self._stamp + 1
        versions = self._versions
        versions[key] = version
        if room < 0:
            self._refresh(model_id)
            return
        indexed, version_of = len(versions), versions.get
        by_room = self._by_room.get(model_id)
        if by_room is None:
            by_room = self._by_room[model_id] = []
            self._by_load[model_id] = []
        stale_heaps.push(by_room, (-room, version, key), indexed, version_of)
        free = worker.models[model_id].free
        entry = (-free, -room, len(worker.leases), version, key)
        stale_heaps.push(self._by_load[model_id], entry, indexed, version_of)
        if by_room[0][1] == version:  # the roomiest now: no stale entry to skip
            self.rooms[model_id] = room
        else:
            self._refresh(model_id)

    def _refresh(self, model_id: str) -> None:
        """Reads the model's room again from the top of its heap (stale entries popped)."""
        heap = self._by_room.get(model_id)
        versions = self._versions
        while heap:
            negative_room, version, key = heap[0]
            if versions.get(key) == version:
                self.rooms[model_id] = -negative_room
                return
            heappop(heap)
        self.rooms.pop(model_id, None)
