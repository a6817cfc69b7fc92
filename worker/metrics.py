"""Prometheus metrics of the workers, the training processes and the maintenance process: their definitions, and the
few calls the hot code makes (once per batch, claim, model lookup, epoch or task, never per item under a lock of
ours).

A worker tree's processes write them to its multiprocess folder and its main process serves them on
IMGQ_METRICS_PORT (shared/core/prometheus.py), so importing this module creates the metric values there: the entry
point sets the folder first. Labels come from small fixed sets (job kind, REASONS, cache result, outcome, queue, a
model name and its Keras metric names), never an id, a path or a message. The list of metrics and the PromQL for the
usual questions are in docs/observability.md.
"""
from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from dataclasses import replace

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from shared.core.celery_app import SCORE_QUEUE, TRAIN_QUEUE
from shared.core.db import session_scope
from shared.core.states import ChunkState, RunState
from shared.core.tables import Chunk, TrainRun

log = logging.getLogger(__name__)

# Why an item failed, from the message the worker wrote for it: (class, message prefixes). Prefixes, not substrings:
# a message may quote the item's uri, which the client chose.
_REASON_PREFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("timeout", ("reading the image timed out", "decoding the image timed out")),
    ("not_found", ("file not found", "not a file", "object not found")),
    ("outside_roots", ("path outside the data roots", "only local paths inside the data roots",
                       "empty or invalid path", "invalid path (", "not an object (")),
    ("too_large", ("file too large", "too many pixels")),
    ("not_an_image", ("not an image", "empty file", "image has no pixels", "the query image is not valid base64")),
    ("truncated", ("truncated image",)),
    ("decode_error", ("cannot decode image",)),
    ("read_error", ("permission denied", "cannot read ", "access denied")),
    ("model_error", ("the model output is not finite", "the embedding is", "the query image's embedding")),
    ("worker_died", ("the worker died", "gave up after")),
)
REASONS: tuple[str, ...] = (*(name for name, _ in _REASON_PREFIXES), "other")
KINDS = ("score", "embed")

ITEMS_SCORED = Counter("imgq_items_scored_total", "Items this worker gave an ok result, by job kind and source "
                       "(model or cache); the items of a chunk that is tried again count again", ["kind", "source"])
ITEMS_FAILED = Counter("imgq_items_failed_total", "Items this worker gave an error result, by job kind and reason "
                       "class", ["kind", "reason"])
BATCH_SECONDS = Histogram("imgq_batch_inference_seconds", "Time the model took for one batch",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BATCH_SIZE = Histogram("imgq_batch_size_images", "Images per model call",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
DECODE_SECONDS = Histogram("imgq_decode_seconds", "Decoding and resizing one image, in a decoding thread",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
MODEL_LOAD_SECONDS = Histogram("imgq_model_load_seconds", "Loading one model version into a worker's memory",
                               buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
MODEL_CACHE = Counter("imgq_model_cache_requests_total", "Model versions asked of a worker's in-memory cache, by "
                      "result (hit, or miss: loaded)", ["result"])
CHUNKS_CLAIMED = Counter("imgq_chunks_claimed_total", "Chunks this worker claimed (from a message or chained)")
CHUNK_REDELIVERIES = Counter("imgq_chunk_redeliveries_total", "Chunks this worker claimed on a second or later "
                             "attempt: sent again after their worker died, stalled or lost the message")
EPOCH_SECONDS = Histogram("imgq_train_epoch_seconds", "One training epoch (fit and validation)",
                          buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
LAST_EPOCH = Gauge("imgq_train_last_epoch", "The last epoch a training of this model name finished", ["model"],
                   multiprocess_mode="mostrecent")
LAST_EPOCH_METRIC = Gauge("imgq_train_last_epoch_metric", "The Keras metrics of that epoch (loss, val_loss, mae, "
                          "accuracy...)", ["model", "metric"], multiprocess_mode="mostrecent")
INDEX_BUILD_SECONDS = Histogram("imgq_index_build_seconds", "One index job (build or delta) on the maintenance "
                                "worker, by outcome (built, failed, skipped)", ["outcome"],
                                buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 10800))
QUERY_EMBED_SECONDS = Histogram("imgq_query_embed_seconds", "A similar-image query's images read, embedded (and "
                                "classified) by this worker, per task",
                                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
QUERY_IMAGES = Counter("imgq_query_images_total", "Query images this worker embedded")


def failure_reason(message: str | None) -> str:
    """The reason class (one of REASONS) of an item's error message."""
    text = (message or "").lower()
    for name, prefixes in _REASON_PREFIXES:
        if text.startswith(prefixes):
            return name
    return "other"


def count_results(kind: str, results: Iterable[dict]) -> None:
    """Count one written batch's results: ok ones by source, errors by reason class."""
    tally = Tally(("ok", "cache" if r.get("from_cache") else "model") if r["status"] == "ok"
                  else ("error", failure_reason(r.get("error"))) for r in results)
    for (status, label), n in tally.items():
        (ITEMS_SCORED.labels(kind, label) if status == "ok" else ITEMS_FAILED.labels(kind, label)).inc(n)


def counted(work, kind: str):
    """The ChunkWork (worker/chunk_work.py) whose `record` also counts each batch it writes."""
    record = work.record

    def record_and_count(session, results, cache_rows):
        written = record(session, results, cache_rows)
        count_results(kind, results)
        return written

    return replace(work, record=record_and_count)


def observe_batch(size: int, seconds: float) -> None:
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)


def timed_predict(model, batch):
    """model.predict(batch), its time and size observed."""
    started = time.perf_counter()
    out = model.predict(batch)
    observe_batch(len(batch), time.perf_counter() - started)
    return out


def timed(fn: Callable, seconds: list) -> Callable:
    """`fn`, appending the time each call took to `seconds` (a list: appends from several threads need no lock)."""
    def run(*args):
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            seconds.append(time.perf_counter() - started)

    return run


def observe_decodes(seconds: Iterable[float]) -> None:
    for s in seconds:
        DECODE_SECONDS.observe(s)


def cache_hit() -> None:
    MODEL_CACHE.labels("hit").inc()


def loaded(seconds: float) -> None:
    MODEL_CACHE.labels("miss").inc()
    MODEL_LOAD_SECONDS.observe(seconds)


def count_claim(attempt: int) -> None:
    CHUNKS_CLAIMED.inc()
    if attempt > 1:
        CHUNK_REDELIVERIES.inc()


def observed_epochs(model: str, record: Callable) -> Callable:
    """`record(number, metrics, seconds, path)` (worker/training/attempt.record_epoch) that also sets the epoch's
    figures, once the epoch is recorded."""
    def record_and_observe(number: int, metrics: dict, seconds: float, path) -> None:
        record(number, metrics, seconds, path)
        EPOCH_SECONDS.observe(seconds)
        LAST_EPOCH.labels(model).set(number)
        for name, value in metrics.items():
            LAST_EPOCH_METRIC.labels(model, name).set(value)

    return record_and_observe


def index_outcome(result: str) -> str:
    """What shared.services.vector_indexes.run_index_job returned, as an outcome label."""
    return "failed" if result == "failed" else "built" if result.startswith("version") else "skipped"


class QueueCollector:
    """Read at scrape time by the maintenance process: imgq_queue_depth{queue}, the messages waiting on the broker,
    and imgq_queue_oldest_enqueued_timestamp_seconds{queue}, when the oldest chunk (score) or train run (train) still
    waiting for a worker was sent, from the database. A broker or database that does not answer leaves its figures
    out of that scrape."""

    def __init__(self, depth: Callable[[str], int | None], queues: tuple[str, ...], oldest: Callable[[], dict]):
        self.depth, self.queues, self.oldest = depth, queues, oldest

    def describe(self):
        yield from self._families()

    def _families(self):
        return (GaugeMetricFamily("imgq_queue_depth", "Messages waiting in a broker queue", labels=["queue"]),
                GaugeMetricFamily("imgq_queue_oldest_enqueued_timestamp_seconds", "Unix time the oldest chunk or "
                                  "train run still waiting in a queue was sent", labels=["queue"]))

    def collect(self):
        depth, oldest = self._families()
        for queue in self.queues:
            n = self.depth(queue)
            if n is not None:
                depth.add_metric([queue], n)
        try:
            for queue, when in self.oldest().items():
                oldest.add_metric([queue], when.timestamp())
        except Exception as exc:  # a scrape must answer with what it has; the database may be away
            log.warning("queue ages left out of /metrics: %s", type(exc).__name__)
        yield from (depth, oldest)


def oldest_waiting() -> dict:
    """{queue: when its oldest waiting chunk (score) or train run (train) was sent}, for the queues that have one."""
    with session_scope() as session:
        chunks = session.scalar(select(func.min(Chunk.enqueued_at)).where(Chunk.state == ChunkState.QUEUED))
        runs = session.scalar(select(func.min(TrainRun.enqueued_at)).where(TrainRun.state == RunState.QUEUED))
    return {queue: when for queue, when in ((SCORE_QUEUE, chunks), (TRAIN_QUEUE, runs)) if when is not None}
