"""The loaded vector indexes of a process, one per key (such as (catalog, embedding space)), newest version first.

Invariants:
- A key's held version never goes down: asking for an older version than held returns the held index.
- One load per key at a time, and each (key, version) loaded once however many threads ask for it; the loader runs
  outside the holder's lock, so a slow load never blocks other keys, nor callers content with the held version.
- A newer index replaces the held one in a single assignment. A query that already holds the old object finishes on
  it (nothing closes or frees it; it goes when its last user drops it), so a swap drops no query.
- A failed load leaves the held index as it was; the callers that waited for that load get its exception, and the
  next get() tries again.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from shared.search.vector_index import CatalogIndex

log = logging.getLogger(__name__)


@dataclass
class _Load:
    """A load in progress: the version it loads, and how it ended."""
    version: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class IndexHolder:
    """Loaded indexes kept in memory, one per key (e.g. (catalog, space)); a newer version is loaded once and swapped
    in atomically; queries that already hold the old object finish on it (no query dropped)."""

    def __init__(self, loader: Callable[[Hashable, int], CatalogIndex]) -> None:
        """`loader(key, version)` returns that version of the key's index (CatalogIndex.load of its folder)."""
        self._loader = loader
        self._lock = threading.Lock()  # guards _held and _loading, never held while loading
        self._held: dict[Hashable, tuple[int, CatalogIndex]] = {}
        self._loading: dict[Hashable, _Load] = {}

    def get(self, key: Hashable, version: int) -> CatalogIndex:
        """The key's index at `version`, or the newer one held; loads `version` when the held one is older or there
        is none (once, however many threads ask: the others wait for that load)."""
        while True:
            with self._lock:
                held = self._held.get(key)
                if held is not None and held[0] >= version:
                    return held[1]
                load = self._loading.get(key)
                if load is None:
                    load = self._loading[key] = _Load(version)
                    break
            load.done.wait()  # another thread loads this key: wait for it, then look again
            if load.error is not None and load.version >= version:
                raise load.error
        return self._run(key, load)

    def _run(self, key: Hashable, load: _Load) -> CatalogIndex:
        """Call the loader for `load` (this thread owns it), then hold what it returned and wake the waiters."""
        try:
            index = self._loader(key, load.version)
        except BaseException as exc:
            load.error = exc
            with self._lock:
                del self._loading[key]
            load.done.set()
            raise
        with self._lock:
            held = self._held.get(key)
            if held is None or held[0] < load.version:  # (the version only grows: one load per key at a time)
                self._held[key] = (load.version, index)
            del self._loading[key]
        load.done.set()
        log.info("vector index %r: version %d loaded (%d vectors)", key, load.version, index.size)
        return index

    def held(self) -> dict:
        """key -> version held, for status and metrics."""
        with self._lock:
            return {key: version for key, (version, _) in self._held.items()}
