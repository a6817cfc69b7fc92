"""The one heartbeat of a worker's long work: a score task's chunks (worker/run_chunk.py), an index build
(worker/index_builder.py) and a training attempt (worker/training/attempt.py) each pass their own `beat()`.

A daemon thread calls `beat()` every `interval` seconds, the first time one interval after `start`, until `stop`;
as a context manager it beats for the length of the `with` block.

Invariants: beats come at a fixed interval whatever the work is doing (a slow batch, FAISS training its lists, a
Keras epoch), so slow work never looks like a dead worker to the sweeper; a beat that raises (the database is
away) is logged as a warning naming the work and the next beat tries again: a heartbeat never stops the work it
watches; its log lines carry the log context of the code that made it (shared/core/logs.py); `stop` wakes the
thread at once, and it ends without another beat (one already under way finishes).
"""
from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def interval_for(heartbeat_timeout: float, at_most: float = 10.0) -> float:
    """Seconds between beats: four beats per IMGQ_HEARTBEAT_TIMEOUT, at least 0.2 s and at most `at_most`."""
    return max(0.2, min(at_most, heartbeat_timeout / 4))


class Heartbeat:
    """Calls `beat()` every `interval` seconds on a daemon thread until stopped. `label` names the work in the log
    ("job <id>", "index job <id>", "train job <id>")."""

    def __init__(self, beat: Callable[[], object], interval: float, *, label: str, name: str = "imgq-heartbeat"):
        if interval <= 0:
            raise ValueError(f"a heartbeat's interval must be positive, got {interval!r}")
        self.beat, self.interval, self.label = beat, interval, label
        self._stopped = threading.Event()
        # the thread runs in a copy of the starter's context: its log lines carry the same job, chunk and attempt
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), name=name,
                                        daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the beats: the thread wakes and ends; a beat under way finishes in it (not waited for: see `join`)."""
        self._stopped.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end after `stop` (tests, and callers that must know the last beat is over)."""
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.beat()
            except Exception:  # the database is away, most likely: the next beat tries again
                log.warning("%s: heartbeat failed; the next beat tries again", self.label, exc_info=True)
