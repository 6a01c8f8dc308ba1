"""Which worker holds which prompt blocks in its prefix cache: the index kv_aware placement
reads.

Workers report the block hashes (services/common/prefix_blocks.py) their engines stored and
evicted, per model, on their heartbeats; a registration carries the whole set, which replaces
what the index knew (a worker that restarted, or a scheduler that did). A worker that leaves,
or unloads a model, takes its blocks with it. A block's hash names its whole prefix, so the
blocks of a prompt a worker holds from the start are found by walking the prompt's chain until
the first block it lacks (`leading`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_BLOCKS_PER_WORKER = 1 << 20  # per model: a report past it is cut (bounded memory)


@dataclass(frozen=True)
class CacheReport:
    """One model's prefix-cache change on one worker (inference.v1.PrefixCacheReport)."""

    model_id: str
    stored: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    full: bool = False  # `stored` is the whole set


class PrefixIndex:
    def __init__(self) -> None:
        self._holders: dict[str, dict[int, set[str]]] = {}  # model → block → workers
        self._held: dict[tuple[str, str], set[int]] = {}  # (worker, model) → blocks

    def apply(self, worker_id: str, report: CacheReport) -> None:
        key = (worker_id, report.model_id)
        held = self._held.setdefault(key, set())
        if report.full:
            self._drop(worker_id, report.model_id, held - set(report.stored))
        else:
            self._drop(worker_id, report.model_id, set(report.removed) & held)
        blocks = self._holders.setdefault(report.model_id, {})
        room = MAX_BLOCKS_PER_WORKER - len(held)
        for h in report.stored:
            if h in held:
                continue
            if room <= 0:
                break
            held.add(h)
            blocks.setdefault(h, set()).add(worker_id)
            room -= 1

    def apply_all(self, worker_id: str, reports: Iterable[CacheReport]) -> None:
        for report in reports:
            self.apply(worker_id, report)

    def forget(self, worker_id: str, model_ids: Iterable[str] | None = None) -> None:
        """Drops a worker's blocks: of `model_ids`, or of every model (it left)."""
        keys = [k for k in self._held if k[0] == worker_id]
        if model_ids is not None:
            wanted = set(model_ids)
            keys = [k for k in keys if k[1] in wanted]
        for key in keys:
            self._drop(worker_id, key[1], set(self._held.pop(key)))

    def leading(
        self, model_id: str, hashes: tuple[int, ...], worker_ids: Iterable[str]
    ) -> dict[str, int]:
        """For each of `worker_ids`, how many of `hashes` it holds from the start. A worker's
        blocks of one chain are a start of it (its cache evicts a chain's tail before its
        head), so the count is found by bisection: O(log n) lookups a worker."""
        blocks = self._holders.get(model_id)
        found = dict.fromkeys(worker_ids, 0)
        if not blocks or not hashes:
            return found
        for worker_id in found:
            held, missing = 0, len(hashes) + 1  # it holds the first `held`, not `missing`
            while missing - held > 1:
                middle = (held + missing) // 2
                holders = blocks.get(hashes[middle - 1])
                if holders is not None and worker_id in holders:
                    held = middle
                else:
                    missing = middle
            found[worker_id] = held
        return found

    def holders(self, model_id: str, block: int) -> set[str]:
        """The workers that hold `block` (and so every block before it)."""
        return self._holders.get(model_id, {}).get(block) or set()

    def blocks_held(self, worker_id: str, model_id: str) -> int:
        return len(self._held.get((worker_id, model_id), ()))

    def _drop(self, worker_id: str, model_id: str, gone: set[int]) -> None:
        held = self._held.get((worker_id, model_id))
        blocks = self._holders.get(model_id, {})
        for h in gone:
            if held is not None:
                held.discard(h)
            holders = blocks.get(h)
            if holders is not None:
                holders.discard(worker_id)
                if not holders:
                    del blocks[h]
