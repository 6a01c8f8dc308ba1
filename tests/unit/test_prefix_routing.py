"""Prefix caching's pure parts: the block-hash chain, the engine's cache, the scheduler's index
of what each worker caches, and kv_aware placement on it."""

from hypothesis import given
from hypothesis import strategies as st

from services.common.prefix_blocks import BLOCK_TOKENS, block_hashes, reusable_blocks
from services.gpu_worker.engines.prefix_cache import MAX_PENDING_EVENTS, PrefixCache
from services.scheduler.core.leases import LeaseTable
from services.scheduler.core.prefix_index import CacheReport, PrefixIndex
from services.scheduler.core.types import (
    Lease,
    ModelSlots,
    PendingRequest,
    Priority,
    WorkerState,
)
from tests.factories import entry, make_core, ticket

B = BLOCK_TOKENS


def ids(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


# -- the chain -------------------------------------------------------------------------------
@given(st.lists(st.integers(0, 2**32 - 1), max_size=200), st.integers(0, 2**32 - 1))
def test_a_blocks_hash_names_its_whole_prefix(prompt, other):
    chain = block_hashes(prompt)
    assert len(chain) == len(prompt) // B
    assert block_hashes(prompt + [other] * B)[: len(chain)] == chain  # a longer prompt extends it
    if chain:
        changed = [prompt[0] ^ 1, *prompt[1:]]  # the first token differs: no block is shared
        assert not set(block_hashes(changed)) & set(chain)


def test_a_chain_goes_on_from_a_parent_block():  # how vLLM's 128-token blocks become ours
    prompt = ids(10 * B)
    whole = block_hashes(prompt)
    assert block_hashes(prompt[4 * B :], parent_hash=whole[3]) == whole[4:]


def test_the_chain_is_bounded_and_the_last_token_is_never_reused():
    assert len(block_hashes(ids(100_000))) == 1024
    assert len(block_hashes(ids(100_000), limit=10)) == 10
    assert reusable_blocks(B) == 0 and reusable_blocks(B + 1) == 1 and reusable_blocks(0) == 0


# -- the engine's cache ----------------------------------------------------------------------
def test_lookup_finds_the_longest_cached_start_and_counts_hits():
    cache = PrefixCache(capacity_tokens=10 * B)
    chain = block_hashes(ids(5 * B))
    cache.store(chain[:3], ["a", "b", "c"])
    assert cache.lookup(chain, 5 * B) == ["a", "b", "c"]
    other = block_hashes([7, *ids(5 * B)[1:]])  # the same tokens but the first: nothing shared
    assert cache.lookup(other, 5 * B) == []
    assert (cache.queried_tokens, cache.hit_tokens) == (10 * B, 3 * B)
    assert cache.lookup(chain[:3], 3 * B) == ["a", "b"]  # a prompt's last token is run again


def test_eviction_keeps_the_budget_and_drops_a_chains_tail_before_its_head():
    cache = PrefixCache(capacity_tokens=4 * B)
    one, two = block_hashes(ids(3 * B)), block_hashes(ids(3 * B, start=1000))
    cache.store(one, [1, 2, 3])
    cache.store(two, [4, 5, 6])
    assert len(cache) == 4
    assert cache.lookup(two, 3 * B + 1) == [4, 5, 6]
    cache.store(one, [1, 2, 3])  # touched again: the old ones go, the tail before the head
    assert len(cache) == 4 and cache.lookup(one, 3 * B + 1) == [1, 2, 3]
    assert cache.lookup(two, 3 * B + 1) == [4]
    cache.shrink_to(1)
    assert cache.held() == [two[0]]  # the block used last


def test_events_say_what_changed_and_overflow_into_a_resync():
    cache = PrefixCache(capacity_tokens=2 * B)
    chain = block_hashes(ids(3 * B))
    cache.store(chain, [1, 2, 3])
    events = cache.take_events()  # the third block was stored and evicted in between
    assert events.stored == chain[:2] and events.removed == [] and not events.resync
    assert cache.take_events().stored == []
    cache.shrink_to(0)
    cache.store(chain[:1], [1])
    events = cache.take_events()  # evicted, then stored again: held, as before
    assert events.removed == [chain[1]] and events.stored == []
    big = PrefixCache(capacity_tokens=(MAX_PENDING_EVENTS + 8) * B)
    many = block_hashes(ids((MAX_PENDING_EVENTS + 1) * B), limit=MAX_PENDING_EVENTS + 1)
    big.store(many, [0] * len(many))
    assert big.take_events().resync and len(big.held()) == len(many)


def test_a_disabled_cache_holds_nothing():
    cache = PrefixCache(capacity_tokens=B - 1)
    assert not cache.enabled
    cache.store(block_hashes(ids(2 * B)), [1, 2])
    assert len(cache) == 0


# -- the scheduler's index -------------------------------------------------------------------
def test_the_index_follows_reports_and_forgets_a_worker_that_leaves():
    index = PrefixIndex()
    chain = tuple(block_hashes(ids(4 * B)))
    index.apply("w1", CacheReport("m", stored=chain))
    index.apply("w2", CacheReport("m", stored=chain[:2]))
    assert index.leading("m", chain, {"w1", "w2", "w3"}) == {"w1": 4, "w2": 2, "w3": 0}
    index.apply("w1", CacheReport("m", removed=chain[1:2]))
    assert index.leading("m", chain, {"w1"}) == {"w1": 1}
    index.apply("w1", CacheReport("m", stored=chain[:3], full=True))  # a re-registration
    assert index.leading("m", chain, {"w1"}) == {"w1": 3}
    index.forget("w1")
    assert index.leading("m", chain, {"w1", "w2"}) == {"w1": 0, "w2": 2}
    assert index.blocks_held("w1", "m") == 0
    assert index.leading("other", chain, {"w2"}) == {"w2": 0}


# -- kv_aware placement ----------------------------------------------------------------------
def request(rid: str, chain: tuple[int, ...], prompt: int) -> PendingRequest:
    return PendingRequest(
        rid,
        "m",
        Priority.MEDIUM,
        "t",
        0.0,
        prompt_tokens=prompt,
        max_tokens=16,
        prefix_blocks=chain,
    )


def kv_table(*workers: str) -> LeaseTable:
    table = LeaseTable.placing_by("kv_aware")
    for worker_id in workers:
        slots = ModelSlots("m", 8, True, kv_capacity=100_000)
        table.upsert_worker(worker_id, f"{worker_id}:1", "cpu-0", [slots], 0)
    return table


def test_kv_aware_sends_a_prompt_where_its_prefix_is_cached():
    table = kv_table("w1", "w2", "w3")
    chain = tuple(block_hashes(ids(64 * B)))
    table.prefixes.apply("w2", CacheReport("m", stored=chain[:60]))
    chosen = {table.grant(request(f"r{i}", chain, 64 * B + 5), 0).worker_id for i in range(3)}
    assert chosen == {"w2"}  # three leases there still cost less than prefilling 60 blocks


def test_kv_aware_weighs_the_saving_against_load():
    table = kv_table("w1", "w2")
    chain = tuple(block_hashes(ids(4 * B)))
    table.prefixes.apply("w2", CacheReport("m", stored=chain))
    for i in range(3):  # w2 runs three leases of 1,000 KV tokens each
        table.adopt(Lease(f"x{i}", f"b{i}", "w2", "w2:1", "cpu-0", "m", 0.0, kv_tokens=1000))
    assert table.grant(request("r", chain, 4 * B + 5), 0).worker_id == "w1"  # saves 64 tokens


def test_the_cores_index_is_fed_by_registrations_and_heartbeats_and_loses_dead_workers():
    core, clock = make_core(placement="kv_aware")
    chain = tuple(block_hashes(ids(8 * B)))

    def register(worker_id, caches=()):
        slots = ModelSlots("m", 4, True, kv_capacity=100_000)
        core.register_worker(
            worker_id, f"{worker_id}:1", "cpu-0", [(entry("m"), slots)], caches=caches
        )

    def place(request_id):
        changes = core.submit(ticket(request_id, prompt_tokens=8 * B + 3, prefix_blocks=chain))
        return changes.granted[0][1]

    register("w1")
    register("w2", [CacheReport("m", stored=chain, full=True)])
    first = place("r1")
    assert first.worker_id == "w2"
    core.heartbeat("w1", WorkerState.READY, caches=[CacheReport("m", stored=chain)])
    core.heartbeat("w2", WorkerState.READY, caches=[CacheReport("m", removed=chain[4:])])
    assert place("r2").worker_id == "w1"  # it holds all 8 blocks now, w2 only 4
    clock.now += 100  # w1 goes silent and is declared dead: its blocks leave the index
    core.heartbeat("w2", WorkerState.READY, running=[first.lease_id])
    core.tick()
    assert [w.worker_id for w in core.workers()] == ["w2"]
    register("w1")  # back, with an empty cache
    assert place("r3").worker_id == "w2"  # 4 blocks and a lease beat nothing cached
    register("w2")  # restarted under the same id (its model still loading: no report)
    assert core.cached_blocks("w2", "m") == 0


def test_blocks_without_payload_are_found_too():
    cache = PrefixCache(capacity_tokens=8 * B)  # the simulated engine keeps no tensors
    chain = block_hashes(ids(3 * B))
    cache.store(chain, [None] * 3)
    assert cache.lookup(chain, 3 * B + 1) == [None] * 3


@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.integers(0, 40))
def test_the_index_finds_how_much_of_a_chain_each_worker_holds(starts, asked):
    chain = tuple(block_hashes(ids(40 * B)))
    index = PrefixIndex()
    for i, held in enumerate(starts):
        index.apply(f"w{i}", CacheReport("m", stored=chain[:held]))
    workers = [f"w{i}" for i in range(len(starts))] + ["nobody"]
    lead = index.leading("m", chain[:asked], workers)
    assert lead == {**{f"w{i}": min(h, asked) for i, h in enumerate(starts)}, "nobody": 0}
