"""The vectors of one catalog in one embedding space, searchable by inner product (FAISS): build, add, save, load.

Invariants:
- One FAISS sub-index per category (items with no category share the None sub-index), so a category filter is exact
  whatever the index kind; a search with no category merges every sub-index's hits.
- An item id is in the index at most once. FAISS ids are positions in its sub-index's id list, which only grows: `add`
  appends, nothing is removed (deleted items are dropped at query time through `exclude`).
- A sub-index keeps the kind it was built with: `add` never trains or rebuilds (a category first met by `add` gets a
  sub-index built from its vectors alone). Build again to change kinds or retrain IVF lists.
- Searches run concurrently from any number of threads. `add` waits for running searches and holds new ones back
  while it writes (a writer-preferring lock), so it is safe but pauses queries: for big deltas build or load a new
  object and swap it in (shared/search/index_holder.py).
- `save` writes a temporary folder beside the target and renames it into place: a reader finds the old index or the
  new one, never part of one.
- Scores are inner products (cosine similarity for L2-normalised vectors): higher is more similar.
"""
from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.core.errors import InvalidRequest
from shared.core.vocab import ApproximateIndex, IndexKind
from shared.search import index_files
from shared.search.rw_lock import ReadWriteLock

FORMAT_VERSION = 1
MANIFEST = "index.json"  # written last: a folder with a manifest is complete
MIN_POINTS_PER_LIST = 39  # FAISS's k-means wants at least this many training vectors per IVF list
ADD_CHUNK = 8192  # vectors per FAISS add call: how often `progress` hears from a build
# FAISS scans exhaustively (exact sub-indexes, IVF's coarse quantizer, an HNSW's storage) one query at a time until
# queries x dimension reaches this, then as one BLAS matrix product. Its default, 128,000, keeps a batch of 64
# 1,280-wide queries on the one-at-a-time path: 668 queries/s against 4,446 with BLAS over a category of 10,000 CNN
# vectors on 2 cores (benchmarks/results/similar_search-20261207-140134.md). From about 8 queries of 1,280 BLAS is
# as fast or faster; a single query below 10,240 dimensions stays on the one-at-a-time path, which is faster for
# one. Process-wide, set once here.
BLAS_FROM_QUERIES_X_DIM = 8 * 1280
faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES_X_DIM


class IndexInputError(InvalidRequest, ValueError):
    """Vectors, ids, categories or a query an index cannot take (a ValueError too, for callers outside the web)."""


class BuildParams(BaseModel):
    """How a CatalogIndex is built and searched; validated, since it comes from HTTP requests.

    Defaults from benchmarks/similar_search.py (2 cores; benchmarks/results/similar_search-20261207-140134.md): on
    100,000 x 1,280 clustered vectors HNSW at efSearch 64 finds 0.9999 of the true top 10, single queries 49x as
    fast as exact search, and IVF at nprobe 16 all of them at 39x; on a CNN's pooled features (all >= 0, a cosine
    of 0.98 between any two) HNSW at efSearch 64 finds 0.984 (32: 0.934) and IVF at nprobe 16 only 0.81. At 20,000
    vectors efConstruction 200 found no more than 100, for twice the build time."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: IndexKind = "auto"  # auto: exact below exact_below vectors in a sub-index, else `approximate`
    exact_below: int = Field(20_000, ge=0, le=10**9)
    approximate: ApproximateIndex = "hnsw"
    nlist: int | None = Field(None, ge=1, le=65_536)  # None: about 4 * sqrt(n), at most n / 39
    nprobe: int = Field(16, ge=1, le=65_536)
    hnsw_m: int = Field(32, ge=4, le=128)
    ef_construction: int = Field(100, ge=8, le=4_096)
    ef_search: int = Field(64, ge=1, le=4_096)


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float  # inner product: higher is more similar
    category: str | None


def resolve_kind(n: int, params: BuildParams) -> tuple[str, int | None]:
    """The kind ("exact", "ivf" or "hnsw") a sub-index of `n` vectors gets, and its IVF list count (None unless ivf).

    An IVF has at most n / 39 lists (enough training vectors for each); when that leaves no more lists than
    nprobe, every search would scan all of them, an exact search done slower, so the sub-index is exact."""
    kind = params.kind
    if kind == "auto":
        kind = "exact" if n < params.exact_below else params.approximate
    if kind != "ivf":
        return kind, None
    nlist = min(params.nlist or round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST)
    return ("exact", None) if nlist <= params.nprobe else ("ivf", nlist)


def _new_faiss_index(kind: str, dim: int, params: BuildParams, nlist: int | None) -> faiss.Index:
    if kind == "exact":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    return index


class _Progress:
    def __init__(self, callback: Callable[[int, int], None] | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


class _SubIndex:
    """One category's FAISS index and the item ids at its positions."""

    def __init__(self, category: str | None, kind: str, index: faiss.Index, ids: list[str]):
        self.category, self.kind, self.index, self.ids = category, kind, index, ids

    @classmethod
    def build(cls, category: str | None, ids: list[str], vectors: np.ndarray, params: BuildParams,
              progress: _Progress) -> _SubIndex:
        kind, nlist = resolve_kind(len(ids), params)
        index = _new_faiss_index(kind, vectors.shape[1], params, nlist)
        if kind == "ivf":
            index.train(vectors)
        sub = cls(category, kind, index, [])
        sub.append(ids, vectors, progress)
        return sub

    @property
    def size(self) -> int:
        return len(self.ids)

    def append(self, ids: list[str], vectors: np.ndarray, progress: _Progress, known: set[str] | None = None) -> None:
        """Add chunk by chunk, and record each chunk's ids (in `known` too) as soon as FAISS has it: if an add fails,
        positions still equal FAISS ids, and what went in is known (a retry skips it)."""
        for start in range(0, len(ids), ADD_CHUNK):
            stop = min(start + ADD_CHUNK, len(ids))
            self.index.add(vectors[start:stop])
            self.ids.extend(ids[start:stop])
            if known is not None:
                known.update(ids[start:stop])
            progress.advance(stop - start)

    def search(self, queries: np.ndarray, k: int, params: BuildParams, widen: int, exhaustive: bool):
        """(scores, positions) of the k best per query. Each `widen` step doubles nprobe or efSearch; `exhaustive`
        scans every vector (k must then be the sub-index's size for the answer to be complete)."""
        if self.kind == "exact":
            return self.index.search(queries, k)
        if self.kind == "ivf":
            nprobe = self.index.nlist if exhaustive else min(self.index.nlist, params.nprobe << widen)
            return self.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        if exhaustive:
            return faiss.downcast_index(self.index.storage).search(queries, k)
        ef = max(k, min(params.ef_search << widen, self.size))
        return self.index.search(queries, k, params=faiss.SearchParametersHNSW(efSearch=ef))

    def describe(self) -> dict:
        extra = {"nlist": int(self.index.nlist)} if self.kind == "ivf" else {}
        return {"category": self.category, "size": self.size, "kind": self.kind, **extra}


class CatalogIndex:
    """Vectors of one catalog in one embedding space, one FAISS sub-index per category (so a category filter is
    exact whatever the index type)."""

    def __init__(self, dim: int, params: BuildParams, subs: Sequence[_SubIndex]):
        self._dim, self._params = dim, params
        self._subs: dict[str | None, _SubIndex] = {sub.category: sub for sub in subs}
        self._known: set[str] = {item for sub in subs for item in sub.ids}
        self._lock = ReadWriteLock()

    @classmethod
    def build(cls, ids: Sequence[str], categories: Sequence[str | None], vectors: np.ndarray, params: BuildParams,
              progress: Callable[[int, int], None] | None = None) -> CatalogIndex:
        """An index of `vectors` (float32 (n, d)); `progress(done, total)` is called as vectors are added."""
        vectors = _checked_vectors(vectors)
        ids, categories = _checked_items(ids, categories, len(vectors))
        twice = _first_repeat(ids)
        if twice is not None:
            raise IndexInputError(f"item ids must be unique; {twice!r} appears more than once", field="ids")
        report = _Progress(progress, len(ids))
        subs = [_SubIndex.build(category, [ids[i] for i in rows], _take(vectors, rows), params, report)
                for category, rows in _group(categories).items()]
        return cls(vectors.shape[1], params, subs)

    def add(self, ids: Sequence[str], categories: Sequence[str | None], vectors: np.ndarray) -> int:
        """Add items without retraining or rebuilding; ids already in the index (or repeated) are skipped.
        Returns how many were added. Searches wait while it writes."""
        vectors = _checked_vectors(vectors, self._dim)
        ids, categories = _checked_items(ids, categories, len(vectors))
        with self._lock.writing():
            fresh: dict[str, int] = {}
            for i, item in enumerate(ids):
                if item not in self._known and item not in fresh:
                    fresh[item] = i
            keep = np.fromiter(fresh.values(), dtype=np.int64, count=len(fresh))
            for category, rows in _group([categories[i] for i in keep]).items():
                picked = keep[rows]
                item_ids, block = [ids[i] for i in picked], vectors[picked]
                sub = self._subs.get(category)
                if sub is None:
                    sub = _SubIndex.build(category, item_ids, block, self._params, _Progress(None, 0))
                    self._subs = {**self._subs, category: sub}
                    self._known.update(item_ids)
                else:
                    sub.append(item_ids, block, _Progress(None, 0), known=self._known)
        return len(fresh)

    def search(self, queries: np.ndarray, k: int, *, category: str | None = None,
               exclude: Callable[[list[str]], set[str]] | None = None) -> list[list[Hit]]:
        """Per query (rows of float32 (q, d)) the k best hits, best first. category None searches every category; one
        not in the index gives empty lists. `exclude(candidate_ids)` says which candidates must not be returned (it is
        asked about each candidate once per search); the search fetches more, wider, until each query has k kept
        hits or every vector was scanned, so it has k whenever the searched items hold k that are not excluded."""
        queries = _checked_vectors(queries, self._dim, what="queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise IndexInputError(f"k must be a whole number of at least 1, not {k!r}", field="k")
        subs = list(self._subs.values()) if category is None else [s for s in [self._subs.get(category)] if s]
        results: list[list[Hit]] = [[] for _ in range(len(queries))]
        total = sum(sub.size for sub in subs)
        if not total:
            return results
        largest = max(sub.size for sub in subs)
        fetch, widen, pending = (k if exclude is None else 2 * k), 0, list(range(len(queries)))
        asked: set[str] = set()
        excluded: set[str] = set()
        while pending:
            exhaustive = fetch >= largest
            with self._lock.reading():
                rows = _search_subs(subs, queries[pending], min(fetch, total), self._params, widen, exhaustive)
            if exclude is not None:
                new = {hit.item_id for row in rows for hit in row} - asked
                if new:
                    asked |= new
                    excluded |= set(exclude(sorted(new))) & new
            still = []
            for qi, row in zip(pending, rows):
                kept = [hit for hit in row if hit.item_id not in excluded] if excluded else row
                if len(kept) >= k or exhaustive:
                    results[qi] = kept[:k]
                else:
                    still.append(qi)
            pending, fetch, widen = still, fetch * 2, widen + 1
        return results

    def contains(self, item_id: str) -> bool:
        return item_id in self._known

    @property
    def size(self) -> int:
        return len(self._known)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def categories(self) -> list[str | None]:
        return list(self._subs)

    @property
    def params(self) -> BuildParams:
        return self._params

    def describe(self) -> dict:
        """JSON-able: size, dimension, per category (a list: None is a category) its size and kind, and params."""
        return {"size": self.size, "dim": self._dim, "categories": [sub.describe() for sub in self._subs.values()],
                "params": self._params.model_dump()}

    def faiss_index(self, category: str | None) -> faiss.Index:
        """One category's FAISS index, for diagnostics and benchmarks: read it, never add to it. Its ids are
        positions in the order the category's items were given to `build` (then `add`)."""
        return self._subs[category].index

    def save(self, folder: Path) -> None:
        """Write the index to `folder` (FAISS files, id lists and a manifest with the params), through a temporary
        folder renamed into place. Replacing an existing folder leaves a moment when it is missing (never one when
        it is half-written): save each version to a folder of its own."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:12]}")
        tmp.mkdir()
        try:
            with self._lock.reading():
                entries = [index_files.write_sub(tmp, n, sub) for n, sub in enumerate(self._subs.values())]
            manifest = {"format": FORMAT_VERSION, "dim": self._dim, "params": self._params.model_dump(),
                        "subs": entries}
            index_files.write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1))
            index_files.fsync(tmp)
            index_files.replace_folder(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: Path) -> CatalogIndex:
        """The index `save` wrote to `folder`; ValueError when the folder is not one, or is inconsistent."""
        folder = Path(folder)
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{folder}: index format {manifest.get('format')!r}, this code reads {FORMAT_VERSION}")
        dim, subs = int(manifest["dim"]), []
        for entry in manifest["subs"]:
            names = (entry["index"], entry["ids"])
            if any(Path(name).name != name or name.startswith(".") for name in names):
                raise ValueError(f"{folder}: the manifest names files outside the folder: {names}")
            index = faiss.read_index(str(folder / entry["index"]))
            ids = json.loads((folder / entry["ids"]).read_text())
            if index.ntotal != len(ids) or index.d != dim:
                raise ValueError(f"{folder}: {entry['index']} holds {index.ntotal} vectors of dimension {index.d}; "
                                 f"its id list has {len(ids)}, the manifest says dimension {dim}")
            subs.append(_SubIndex(entry["category"], entry["kind"], index, ids))
        return cls(dim, BuildParams.model_validate(manifest["params"]), subs)


# --------------------------------------------------------------------------- helpers


def _checked_vectors(vectors: np.ndarray, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """`vectors` as C-contiguous float32 (a copy only when needed), or IndexInputError saying what is wrong."""
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise IndexInputError(f"{what} must be a 2-D array (rows, dimension), not one of shape {array.shape}"
                              + ("; use queries[None] for one query" if array.ndim == 1 else ""), field=what)
    if not np.issubdtype(array.dtype, np.floating):
        raise IndexInputError(f"{what} must hold floats (float32), not {array.dtype}", field=what)
    if dim is not None and array.shape[1] != dim:
        raise IndexInputError(f"{what} have dimension {array.shape[1]}; the index has dimension {dim}", field=what)
    if array.shape[1] < 1:
        raise IndexInputError(f"{what} must have a dimension of at least 1", field=what)
    array = np.ascontiguousarray(array, dtype=np.float32)
    for start in range(0, len(array), 4096):  # in blocks: no second full-size (boolean) array
        finite = np.isfinite(array[start:start + 4096]).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise IndexInputError(f"{what} row {row} holds NaN or infinity (as float32)", field=what)
    return array


def _checked_items(ids: Sequence[str], categories: Sequence[str | None], n: int) -> tuple[list[str], list]:
    ids, categories = list(ids), list(categories)
    if not len(ids) == len(categories) == n:
        raise IndexInputError(f"ids ({len(ids)}), categories ({len(categories)}) and vectors ({n} rows) must have "
                              f"the same length")
    bad = [item for item in ids if not isinstance(item, str) or not item][:1]
    if bad:
        raise IndexInputError(f"item ids must be non-empty strings, not {bad[0]!r}", field="ids")
    bad = [c for c in categories if c is not None and not isinstance(c, str)][:1]
    if bad:
        raise IndexInputError(f"categories must be strings or None, not {bad[0]!r}", field="categories")
    return [str(item) for item in ids], [None if c is None else str(c) for c in categories]


def _first_repeat(ids: list[str]) -> str | None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            return item
        seen.add(item)
    return None


def _group(categories: list[str | None]) -> dict[str | None, np.ndarray]:
    """Row numbers per category, categories in the order first met."""
    rows: dict[str | None, list[int]] = {}
    for i, category in enumerate(categories):
        rows.setdefault(category, []).append(i)
    return {category: np.asarray(found, dtype=np.int64) for category, found in rows.items()}


def _take(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return vectors if len(rows) == len(vectors) else vectors[rows]  # one category: no copy


def _search_subs(subs: list[_SubIndex], queries: np.ndarray, fetch: int, params: BuildParams, widen: int,
                 exhaustive: bool) -> list[list[Hit]]:
    """Per query, the `fetch` best hits of all `subs` together, best first."""
    parts = []
    for sub in subs:
        if sub.size:
            parts.append((sub, *sub.search(queries, min(fetch, sub.size), params, widen, exhaustive)))
    scores = np.concatenate([part[1] for part in parts], axis=1)
    positions = np.concatenate([part[2] for part in parts], axis=1)
    owner = np.concatenate([np.full(part[2].shape[1], n) for n, part in enumerate(parts)])
    scores = np.where(positions >= 0, scores, -np.inf)  # FAISS pads short answers with position -1
    order = np.argsort(-scores, axis=1, kind="stable")[:, :fetch]
    rows = []
    for qi in range(len(queries)):
        row = []
        for col in order[qi]:
            position = positions[qi, col]
            if position < 0:
                break
            sub = parts[owner[col]][0]
            row.append(Hit(sub.ids[position], float(scores[qi, col]), sub.category))
        rows.append(row)
    return rows
