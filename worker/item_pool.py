"""Threads that run one call per item, each call bounded by its own timeout.

A call that overruns (a read blocked on a stuck network mount, a decode that never ends) becomes
that item's result through `on_timeout`, and the pool moves on: its threads are abandoned (a thread
blocked in the kernel cannot be stopped) and fresh ones take the remaining items. Nothing ever waits
on an abandoned thread: not the chunk, not the worker, not the process's exit (the threads are
daemons, unlike concurrent.futures' which the interpreter joins at exit).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Threads:
    """A fixed set of daemon threads taking calls from one queue."""

    def __init__(self, count: int, name: str):
        self.count = count
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        for k in range(count):
            threading.Thread(target=self._run, name=f"{name}-{k}", daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._calls.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            future, fn, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel the calls not yet started; each thread ends after its current call."""
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                call[0].cancel()
        for _ in range(self.count):
            self._calls.put(None)


class ItemPool:
    def __init__(self, threads: int, name: str = "imgq-io"):
        self.threads, self.name = threads, name
        self.abandoned = 0  # threads left behind on overrunning calls
        self._pool = _Threads(threads, name)

    def map(self, fn: Callable[[T], R], items: Sequence[T], timeout: float,
            on_timeout: Callable[[T], R]) -> list[R]:
        """[fn(item)] in order; an item whose own call runs longer than `timeout` gets on_timeout(item)."""
        results: dict[int, R] = {}
        todo = list(range(len(items)))
        while todo:
            started: dict[int, float] = {}
            futures = {i: self._pool.submit(_timed, started, i, fn, items[i]) for i in todo}
            stuck = next((i for i in todo if not _wait(futures[i], started, i, timeout, results)), None)
            if stuck is None:
                break
            results[stuck] = on_timeout(items[stuck])
            self._pool.shutdown()
            self.abandoned += self.threads
            self._pool = _Threads(self.threads, self.name)
            todo = [i for i in todo if i not in results and not _collect(futures[i], i, results)]
        return [results[i] for i in range(len(items))]

    def close(self) -> None:
        """Let the threads end after their current call, without waiting: one may be stuck."""
        self._pool.shutdown()


def _timed(started: dict, i: int, fn, item):
    started[i] = time.monotonic()
    return fn(item)


def _wait(future: Future, started: dict, i: int, timeout: float, results: dict) -> bool:
    """Put the future's result in `results`; False if its call ran longer than `timeout`. Calls start in
    submission order and every earlier one has ended, so this one starts as soon as a thread is free."""
    while True:
        begun = started.get(i)
        left = timeout if begun is None else begun + timeout - time.monotonic()
        if left <= 0:
            return False
        try:
            results[i] = future.result(timeout=left)
            return True
        except FutureTimeout:
            continue


def _collect(future: Future, i: int, results: dict) -> bool:
    """Keep a result that finished on an abandoned pool; False if the item must run again."""
    if future.done() and not future.cancelled() and future.exception() is None:
        results[i] = future.result()
        return True
    return False
