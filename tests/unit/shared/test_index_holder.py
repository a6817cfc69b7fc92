"""IndexHolder: one load per (key, version) however many threads ask, newer versions swap in, an old object stays
usable by whoever holds it, and the held version never goes down."""
from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest

from shared.search.index_holder import IndexHolder
from shared.search.vector_index import BuildParams, CatalogIndex

DIM = 8


def small_index(version: int) -> CatalogIndex:
    """`version` + 1 items, so a result says which version answered."""
    vectors = np.eye(DIM, dtype=np.float32)[: version + 1]
    return CatalogIndex.build([f"v{version}-{i}" for i in range(version + 1)], [None] * (version + 1), vectors,
                              BuildParams())


class CountingLoader:
    """A loader that counts its calls per (key, version) and takes `delay` seconds, long enough for threads to pile
    up behind it; `fail` names (key, version) pairs that raise."""

    def __init__(self, delay: float = 0.0, fail: frozenset = frozenset()):
        self.calls: Counter = Counter()
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()

    def __call__(self, key, version: int) -> CatalogIndex:
        with self.lock:
            self.calls[(key, version)] += 1
        time.sleep(self.delay)
        if (key, version) in self.fail:
            raise OSError(f"cannot read {key} version {version}")
        return small_index(version)


def in_threads(n: int, target) -> list:
    """`target(i)` in `n` threads started together; their results (or exceptions) in order."""
    results: list = [None] * n
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        try:
            results[i] = target(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_concurrent_gets_of_one_version_load_it_once_and_share_the_object():
    loader = CountingLoader(delay=0.2)
    holder = IndexHolder(loader)
    got = in_threads(8, lambda i: holder.get(("shop", "clip"), 3))
    assert loader.calls == Counter({(("shop", "clip"), 3): 1})
    assert all(index is got[0] for index in got) and got[0].size == 4
    assert holder.held() == {("shop", "clip"): 3}


def test_a_slow_load_of_one_key_does_not_block_another_key():
    slow = threading.Event()

    def loader(key, version):
        if key == "slow":
            slow.wait(timeout=10)
        return small_index(version)

    holder = IndexHolder(loader)
    waiting = threading.Thread(target=holder.get, args=("slow", 1))
    waiting.start()
    t0 = time.perf_counter()
    assert holder.get("fast", 2).size == 3
    assert time.perf_counter() - t0 < 2
    slow.set()
    waiting.join(timeout=10)
    assert holder.held() == {"fast": 2, "slow": 1}


def test_a_newer_version_swaps_in_while_the_old_object_still_answers():
    loader = CountingLoader()
    holder = IndexHolder(loader)
    old = holder.get("k", 1)
    new = holder.get("k", 2)
    assert new is not old and holder.get("k", 2) is new and holder.held() == {"k": 2}
    query = np.eye(DIM, dtype=np.float32)[:1]
    assert old.search(query, 5)[0][0].item_id == "v1-0" and len(old.search(query, 5)[0]) == 2
    assert len(new.search(query, 5)[0]) == 3
    assert loader.calls == Counter({("k", 1): 1, ("k", 2): 1})


def test_the_held_version_never_goes_down():
    loader = CountingLoader()
    holder = IndexHolder(loader)
    newest = holder.get("k", 5)
    assert holder.get("k", 4) is newest and holder.get("k", 1) is newest
    assert holder.held() == {"k": 5} and loader.calls == Counter({("k", 5): 1})


def test_racing_gets_of_two_versions_end_on_the_newer_one_each_loaded_once():
    loader = CountingLoader(delay=0.1)
    holder = IndexHolder(loader)
    got = in_threads(10, lambda i: holder.get("k", 1 + i % 2))
    assert holder.held() == {"k": 2}
    assert all(index.size >= 1 + i % 2 + 1 for i, index in enumerate(got))  # each got its version or newer
    assert set(loader.calls.values()) == {1} and set(loader.calls) <= {("k", 1), ("k", 2)}


def test_a_failed_load_keeps_the_held_index_and_reaches_every_waiter():
    loader = CountingLoader(delay=0.2, fail=frozenset({("k", 2)}))
    holder = IndexHolder(loader)
    old = holder.get("k", 1)
    got = in_threads(5, lambda i: holder.get("k", 2))
    assert all(isinstance(result, OSError) for result in got) and loader.calls[("k", 2)] == 1
    assert holder.held() == {"k": 1} and holder.get("k", 1) is old
    with pytest.raises(OSError, match="version 2"):  # the next get tries again
        holder.get("k", 2)
    assert loader.calls[("k", 2)] == 2
