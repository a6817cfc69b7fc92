"""Calls bounded one by one: a call that overruns becomes its item's answer and the rest go on."""
import threading
import time

from worker.item_pool import ItemPool


def test_an_overrunning_call_becomes_its_items_answer_and_the_pool_goes_on():
    release = threading.Event()

    def work(item):
        if item == "stuck":
            release.wait(30)  # blocked, as a read on a dead mount is
        return item.upper()

    pool = ItemPool(2)
    started = time.monotonic()
    out = pool.map(work, ["a", "b", "stuck", "c", "d", "e"], 0.5, lambda item: f"timeout:{item}")
    assert out == ["A", "B", "timeout:stuck", "C", "D", "E"]
    assert time.monotonic() - started < 5
    assert pool.abandoned == 2
    assert pool.map(work, ["x", "y"], 0.5, lambda item: "timeout") == ["X", "Y"]  # fresh threads serve on
    pool.close()
    release.set()


def test_the_timeout_counts_from_when_a_call_starts_not_from_when_it_was_queued():
    pool = ItemPool(1)

    def slow(item):
        time.sleep(0.3)
        return item

    # 5 calls of 0.3 s on one thread: 1.5 s in all, each well within its own 0.5 s
    assert pool.map(slow, list(range(5)), 0.5, lambda item: "timeout") == [0, 1, 2, 3, 4]
    pool.close()


def test_an_exception_in_a_call_reaches_the_caller():
    pool = ItemPool(2)

    def boom(item):
        raise ValueError(f"bad {item}")

    try:
        pool.map(boom, ["a"], 1.0, lambda item: None)
    except ValueError as exc:
        assert str(exc) == "bad a"
    else:
        raise AssertionError("the exception was swallowed")
    pool.close()
