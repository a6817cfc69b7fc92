"""Scoring a list of items with a loaded model: decode in threads while the model runs.

Plain functions, no Celery and no database: the caller passes `lookup_cache` and `write_batch`.
Three stages overlap, each in its own threads: batch k+2 is read and hashed (a read pool, `read_threads` items in
flight: files, or objects in a store), batch k+1 is looked up in the score cache and decoded (a decode pool), and the
model predicts batch k. Each stage runs at most a batch or two ahead of the next, so memory stays bounded.

What a result holds is the `outputs` reader's business: `ScoreOutputs` (the default) turns raw rows into named
outputs and cache rows for the score cache; embed jobs pass worker/embedding.VectorOutputs (vectors, cached in the
catalog's embeddings). The pipeline itself (reads, hashes, cache lookups, decoding, batching, writes) is the same.
Each batch's model time and size, and each image's decode time, are observed once the batch is through
(worker/metrics.py).
"""
from __future__ import annotations

import contextvars
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from shared.core.errors import ObjectStoreUnavailable
from shared.images.https_items import FetchPolicy
from shared.images.imaging import ImageError, load_for_model
from shared.images.item_reads import Places, read_item
from shared.images.object_store import StoreConfig
from shared.models.outputs import interpret
from worker import metrics
from worker.item_pool import ItemPool

log = logging.getLogger(__name__)
OUTAGE_PAUSE_FIRST, OUTAGE_PAUSE_MAX = 1.0, 10.0  # seconds between reads of a batch while the store is away


@dataclass
class Prepared:
    """One batch ready for the model: inputs for the misses, finished results for the rest."""
    results: list[dict] = field(default_factory=list)  # errors and cache hits, already final
    ids: list[str] = field(default_factory=list)        # items to predict, in input order
    hashes: list[str] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)
    geometries: list = field(default_factory=list)


@dataclass
class ScoreOptions:
    roots: tuple[Path, ...]
    batch_size: int
    max_pixels: int
    max_bytes: int
    threads: int
    use_cache: bool = True
    fast_jpeg: bool = True  # JPEG pixels by simplejpeg (same result as Pillow, see shared/images/imaging.py)
    read_timeout: float = 30.0  # per item: a read that blocks longer becomes that item's error
    decode_timeout: float = 60.0
    object_roots: tuple[str, ...] = ()  # allowed object-store prefixes (s3://bucket/prefix/)
    store: StoreConfig = StoreConfig()
    read_threads: int = 0  # reads in flight; 0: `threads`
    web: FetchPolicy | None = None  # how image URLs are fetched (None: refused)
    outage_wait: float = 0.0  # how long a batch is read again while the object store is away (IMGQ_STORE_OUTAGE_WAIT)


def _fetch(item, opts):
    """(item id, bytes, hash, error). An object read's retries end a little before the item's read timeout, so an
    unreachable store is reported as such (ObjectStoreUnavailable, raised) rather than as this item's timeout."""
    item_id, uri = item
    places = Places(opts.roots, opts.object_roots, opts.store, opts.web)
    try:
        data, digest = read_item(uri, places, opts.max_bytes, deadline=time.monotonic() + 0.9 * opts.read_timeout)
        return item_id, data, digest, None
    except ImageError as exc:
        return item_id, None, None, str(exc)


class ScoreOutputs:
    """Scoring's reading of a model: named outputs in the units the user works in (shared/models/outputs.py),
    remembered per (content hash, version) in the score cache."""

    def __init__(self, model):
        self.signature, self.version_id = model.signature, model.version_id

    def cached(self, outputs: dict) -> dict:
        """The fields of an ok result for an item found in the cache."""
        return {"outputs": outputs}

    def predicted(self, raw: np.ndarray, geometries: list) -> list[dict]:
        """One dict per row: the fields of its result, "status" ok or error."""
        sig = self.signature
        with np.errstate(all="ignore"):
            outputs = interpret(sig.task, raw, output_names=sig.output_names, class_names=sig.class_names,
                                target_transform=sig.target_transform, geometries=geometries)
        return [{"status": "ok", "outputs": out} if all(math.isfinite(v) for v in out.values() if isinstance(v, float))
                else {"status": "error", "error": "the model output is not finite (NaN or infinity)"}
                for out in outputs]

    def cache_row(self, digest: str, result: dict) -> dict | None:
        """What the cache keeps of an ok result (None: nothing)."""
        return {"content_hash": digest, "model_version_id": self.version_id, "outputs": result["outputs"]}


def _read(batch, opts, reads: ItemPool) -> list[tuple]:
    """[(item id, bytes, hash, error)] of one batch, read by the read pool, each read bounded by the read timeout.
    Each read runs in a copy of this thread's context, so a store's retries are logged with the job and chunk."""
    context = contextvars.copy_context()
    return reads.map(lambda it: context.copy().run(_fetch, it, opts), batch, opts.read_timeout,
                     lambda it: (it[0], None, None, f"reading the image timed out after {opts.read_timeout:g} s"))


def _read_through_outages(batch, opts, reads: ItemPool, sleep=time.sleep) -> list[tuple]:
    """`_read`, again after a pause while the object store is away (ObjectStoreUnavailable: every retry of a read
    failed to reach it), for at most `opts.outage_wait` seconds: the chunk stays claimed and heartbeating meanwhile,
    so an outage costs time, never an item's error or one of the chunk's attempts. Past that, the outage is raised
    and ends the attempt (the chunk goes back to pending)."""
    give_up = time.monotonic() + opts.outage_wait
    pause = OUTAGE_PAUSE_FIRST
    while True:
        try:
            return _read(batch, opts, reads)
        except ObjectStoreUnavailable as exc:
            if time.monotonic() + pause > give_up:
                raise
            log.warning("object store away (%s): the batch of %d items is read again in %.0f s", exc, len(batch),
                        pause)
            sleep(pause)
            pause = min(OUTAGE_PAUSE_MAX, pause * 2)


def _prepare(fetched, model, opts, pool, lookup_cache, reading) -> Prepared:
    prepared = Prepared()
    hits = lookup_cache([h for _, _, h, _ in fetched if h]) if opts.use_cache else {}
    to_decode = []
    for item_id, data, digest, error in fetched:
        if error:
            prepared.results.append({"item_id": item_id, "status": "error", "error": error})
        elif digest in hits:
            prepared.results.append({"item_id": item_id, "status": "ok", **reading.cached(hits[digest]),
                                     "content_hash": digest, "from_cache": True})
        else:
            to_decode.append((item_id, data, digest))

    def decode(entry):
        item_id, data, digest = entry
        try:
            return item_id, digest, load_for_model(data, model.preprocessing, max_pixels=opts.max_pixels,
                                                  fast_jpeg=opts.fast_jpeg, scaled=False), None
        except ImageError as exc:
            return item_id, digest, None, str(exc)

    def decode_timed_out(entry):
        return entry[0], entry[2], None, f"decoding the image timed out after {opts.decode_timeout:g} s"

    decode_seconds: list[float] = []
    timed_decode = metrics.timed(decode, decode_seconds)
    for item_id, digest, loaded, error in pool.map(timed_decode, to_decode, opts.decode_timeout, decode_timed_out):
        if error:
            prepared.results.append({"item_id": item_id, "status": "error", "error": error,
                                     "content_hash": digest})
        else:
            prepared.ids.append(item_id)
            prepared.hashes.append(digest)
            prepared.arrays.append(loaded[0])
            prepared.geometries.append(loaded[1])
    metrics.observe_decodes(decode_seconds)  # from this one thread, after the batch's decodes
    return prepared


def _batches(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` items (the last one shorter), pulled from `items` only as each batch is needed."""
    stream = iter(items)
    while batch := list(islice(stream, size)):
        yield batch


def _prefetch(produce: Iterator, depth: int = 2, name: str = "imgq-decode") -> Iterator:
    """Run `produce` in a background thread, at most `depth` batches ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def run():
        try:
            for item in produce:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # hand the error to the consumer
            q.put(exc)
        finally:  # an earlier stage feeding `produce` stops too (closed here, in the only thread iterating it)
            close = getattr(produce, "close", None)
            if close is not None:
                close()

    # in a copy of the caller's context: lines logged while feeding carry its job and chunk (shared/core/logs.py)
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def score_items(items: Iterable[tuple[str, str]], model, opts: ScoreOptions,
                lookup_cache: Callable[[list[str]], dict], write_batch: Callable[[list[dict], list[dict]], None],
                outputs=None) -> None:
    """Score `items` [(id, uri)] in batches, pulling from the iterable only as batches are prepared;
    `write_batch(results, cache_rows)` once per batch, in order, from a writer thread (at most one write in
    flight), so database writes overlap inference. `outputs` reads the model's rows (default: ScoreOutputs)."""
    reading = outputs if outputs is not None else ScoreOutputs(model)
    pools = ItemPool(opts.read_threads or opts.threads, "imgq-read"), ItemPool(opts.threads)
    try:
        _score_batches(items, model, reading, opts, pools, lookup_cache, write_batch)
    finally:
        for pool in pools:
            pool.close()


def _score_batches(items, model, reading, opts, pools, lookup_cache, write_batch) -> None:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgq-write") as writer:
        reads, decodes = pools
        read_ahead = _prefetch((_read_through_outages(b, opts, reads) for b in _batches(items, opts.batch_size)), 1,
                               "imgq-read")
        produce = (_prepare(fetched, model, opts, decodes, lookup_cache, reading) for fetched in read_ahead)
        pending = None  # the previous batch's write runs while the model predicts this one
        for prepared in _prefetch(produce):
            results, cache_rows = prepared.results, []
            if prepared.arrays:
                rows = reading.predicted(metrics.timed_predict(model, np.stack(prepared.arrays)), prepared.geometries)
                for item_id, digest, row in zip(prepared.ids, prepared.hashes, rows):
                    results.append({"item_id": item_id, **row, "content_hash": digest})
                    cache_row = reading.cache_row(digest, row) if row["status"] == "ok" else None
                    if cache_row is not None:
                        cache_rows.append(cache_row)
            if pending is not None:
                pending.result()
            pending = writer.submit(contextvars.copy_context().run, write_batch, results, cache_rows)
        if pending is not None:
            pending.result()
