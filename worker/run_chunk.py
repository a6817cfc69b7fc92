"""One score task from claim to finish, without Celery: its chunk, then the job's next fresh chunks. Score and
embed jobs run the same way; worker/chunk_work.py says what differs (the model or embedder, the cache, the writes).

The decode pipeline stays alive across chunks: while the last batches of a chunk are decoded and scored,
the task claims the job's next fresh chunk (`chunk_lifecycle.claim_next_fresh`) and feeds its items into
the same stream, for up to IMGQ_CHAIN_SECONDS, so the cores never idle between chunks. A chunk is
finished in the same transaction as the batch that writes its last result. The broker's message for a
chunk taken this way finds it running or done and is skipped.

While the task holds chunks, a heartbeat (worker/heartbeat.py) writes their liveness at a fixed interval, whatever a
batch costs, so a slow batch never looks like a dead worker. Every write after a claim is fenced by that
chunk's attempt number (see worker/chunk_lifecycle.py).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.logs import bind
from shared.images.item_reads import web_policy
from shared.images.object_store import StoreConfig
from shared.services import drift, job_exports
from worker import chunk_lifecycle, chunk_work, metrics
from worker.chunk_lifecycle import ClaimedChunk
from worker.chunk_work import ChunkWork, ModelUnusable
from worker.heartbeat import Heartbeat, interval_for
from worker.model_cache import ModelCache
from worker.scoring import ScoreOptions, score_items

log = logging.getLogger(__name__)


class HeldChunks:
    """The chunks a task holds (claimed, not yet finished) and which of their items still lack a result.
    Shared by the feeding thread, the writer thread and the heartbeat thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempts: dict[int, int] = {}  # chunk_no -> attempt
        self._left: dict[int, int] = {}  # chunk_no -> items fed and not yet written
        self._chunk_of: dict[str, int] = {}  # item id -> chunk_no, while in flight

    def take(self, claimed: ClaimedChunk) -> bool:
        """Hold a claimed chunk; True if it has nothing left to score (finish it at once)."""
        with self._lock:
            self._attempts[claimed.chunk_no] = claimed.attempt
            if not claimed.items:
                return True
            self._left[claimed.chunk_no] = len(claimed.items)
            self._chunk_of.update((item_id, claimed.chunk_no) for item_id, _ in claimed.items)
            return False

    def written(self, item_ids) -> list[tuple[int, int]]:
        """Note results written; returns the (chunk_no, attempt) whose last result this was."""
        complete = []
        with self._lock:
            for item_id in item_ids:
                chunk_no = self._chunk_of.pop(item_id, None)
                if chunk_no is None:
                    continue
                self._left[chunk_no] -= 1
                if self._left[chunk_no] == 0:
                    del self._left[chunk_no]
                    complete.append((chunk_no, self._attempts.pop(chunk_no)))
        return complete

    def drop(self, chunk_no: int) -> int:
        """Stop holding a chunk (finished with nothing to score); returns its attempt."""
        with self._lock:
            return self._attempts.pop(chunk_no)

    def held(self) -> list[tuple[int, int]]:
        with self._lock:
            return list(self._attempts.items())

    def release_all(self) -> list[tuple[int, int]]:
        with self._lock:
            held = list(self._attempts.items())
            self._attempts.clear()
            self._left.clear()
            self._chunk_of.clear()
            return held


def beat_held_chunks(job_id: str, chunks: HeldChunks, lost: set[int]) -> None:
    """One heartbeat (worker/heartbeat.py) of the chunks a task holds: their liveness written, fenced by attempt.
    A chunk whose attempt lost it (a newer attempt took over) is added to `lost` and logged once."""
    with session_scope() as session:
        owned = {no: chunk_lifecycle.heartbeat(session, job_id, no, attempt) for no, attempt in chunks.held()}
    for chunk_no in sorted(no for no, still in owned.items() if not still and no not in lost):
        lost.add(chunk_no)
        log.warning("job %s chunk %s: this attempt no longer owns the chunk", job_id, chunk_no)


def run_chunk(job_id: str, chunk_no: int, *, worker: str, models: ModelCache, settings: Settings) -> str:
    """Returns what happened, for the log: 'done', or why the chunk was skipped.

    The model (and an embed job's embedder) is loaded before the chunk is claimed, so a slow first load never
    looks like a dead worker to the sweeper.
    """
    with session_scope() as session:
        job = chunk_lifecycle.model_for(session, job_id, chunk_no)
    if isinstance(job, str):
        log.info("job %s chunk %s skipped: %s", job_id, chunk_no, job)
        return job
    try:
        work = metrics.counted(chunk_work.prepare(job_id, job, models), str(job.kind))
    except ModelUnusable as exc:  # a model that cannot load (or cut at its layer) fails the whole job, clearly
        log.error("job %s: %s", job_id, exc)
        with session_scope() as session:
            chunk_lifecycle.fail_job(session, job_id, str(exc))
        return "model failed to load"
    with session_scope() as session:
        claimed = chunk_lifecycle.claim(session, job_id, chunk_no, worker=worker,
                                        heartbeat_timeout=settings.heartbeat_timeout,
                                        max_attempts=settings.max_attempts)
    if isinstance(claimed, str):
        log.info("job %s chunk %s skipped: %s", job_id, chunk_no, claimed)
        return claimed
    bind(attempt=claimed.attempt)
    metrics.count_claim(claimed.attempt)
    log.info("job %s chunk %s: claimed, attempt %s, %d items to score", job_id, chunk_no, claimed.attempt,
             len(claimed.items))
    chunks = HeldChunks()
    nothing_left = chunks.take(claimed)  # held from the claim on: released below whatever fails first
    try:
        with Heartbeat(partial(beat_held_chunks, job_id, chunks, set()), interval_for(settings.heartbeat_timeout),
                       label=f"job {job_id}"):
            if claimed.isolate:
                _score_isolated(claimed, chunks, work, settings)
            else:
                _score_chained(claimed, nothing_left, chunks, work, settings, worker)
    except BaseException as exc:  # results so far are kept; the rest is retried, attempts bounded
        with session_scope() as session:
            for held_no, attempt in chunks.release_all():
                chunk_lifecycle.release(session, job_id, held_no, attempt, f"{type(exc).__name__}: {exc}")
        raise
    record_drift(job_id, settings)
    record_export(job_id, settings)
    return "done"


def record_drift(job_id: str, settings: Settings) -> None:
    """When this task's chunks finished a score job: its output drift recorded (shared/services/drift.py; nothing
    for an unfinished job, or one whose drift another task recorded). The chunks are done whatever happens here."""
    try:
        drift.record_job_drift(job_id, settings.drift_threshold)
    except Exception:  # noqa: BLE001 - the task's boundary: the scores stand, only the drift figure is missing
        log.exception("job %s: output drift not recorded", job_id)


def record_export(job_id: str, settings: Settings) -> None:
    """When this task's chunks finished a job with an `export`: its results written there (shared/services/
    job_exports.py; a store away leaves it pending for the sweeper). The chunks are done whatever happens here."""
    try:
        job_exports.write_export(job_id, settings)
    except Exception:  # noqa: BLE001 - the task's boundary: the results stand, the sweeper tries the export again
        log.exception("job %s: results not exported", job_id)


def _options(claimed: ClaimedChunk, settings: Settings) -> ScoreOptions:
    return ScoreOptions(roots=settings.readable_roots(claimed.upload_folder), batch_size=settings.batch_size,
                        max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes,
                        threads=settings.decode_threads, use_cache=claimed.use_cache, fast_jpeg=settings.fast_jpeg,
                        read_timeout=settings.read_timeout, decode_timeout=settings.decode_timeout,
                        object_roots=settings.readable_object_roots(claimed.upload_folder),
                        store=StoreConfig.from_settings(settings),
                        read_threads=settings.read_threads, web=web_policy(settings),
                        outage_wait=settings.store_outage_wait)


def _lookup(work: ChunkWork):
    def lookup(hashes):
        with session_scope() as session:
            return work.lookup(session, hashes)
    return lookup


def _finish(session, job_id: str, chunk_no: int, attempt: int) -> None:
    if not chunk_lifecycle.finish(session, job_id, chunk_no, attempt):
        log.info("job %s chunk %s: attempt %s finished after a newer attempt took over", job_id, chunk_no, attempt)


def _score_chained(first: ClaimedChunk, nothing_left: bool, chunks: HeldChunks, work: ChunkWork,
                   settings: Settings, worker: str) -> None:
    job_id = first.job_id

    def write(results, cache_rows):
        with session_scope() as session:
            work.record(session, results, cache_rows)
            for chunk_no, attempt in chunks.written(r["item_id"] for r in results):
                _finish(session, job_id, chunk_no, attempt)

    score_items(_chained_items(first, nothing_left, chunks, settings, worker), work.model, _options(first, settings),
                _lookup(work), write, work.outputs)


def _chained_items(first: ClaimedChunk, nothing_left: bool, chunks: HeldChunks, settings: Settings,
                   worker: str) -> Iterator[tuple[str, str]]:
    """The items of `first` (already held), then of the job's next fresh chunks, claimed and held as the stream
    reaches them."""
    stop_at = time.monotonic() + settings.chain_seconds
    claimed: ClaimedChunk | None = first
    while claimed is not None:
        if nothing_left if claimed is first else chunks.take(claimed):
            with session_scope() as session:
                _finish(session, claimed.job_id, claimed.chunk_no, chunks.drop(claimed.chunk_no))
        yield from claimed.items
        if time.monotonic() >= stop_at:
            return
        with session_scope() as session:
            claimed = chunk_lifecycle.claim_next_fresh(
                session, first.job_id, claimed.chunk_no, worker=worker,
                heartbeat_timeout=settings.heartbeat_timeout, max_attempts=settings.max_attempts)
        if claimed is not None:
            bind(chunk_id=claimed.chunk_no, attempt=claimed.attempt)  # this feeding thread's lines, from here on
            metrics.count_claim(claimed.attempt)
            log.info("job %s chunk %s: claimed by the same task, attempt %s", claimed.job_id, claimed.chunk_no,
                     claimed.attempt)


def _score_isolated(claimed: ClaimedChunk, chunks: HeldChunks, work: ChunkWork, settings: Settings) -> None:
    """Attempts beyond IMGQ_MAX_ATTEMPTS: each untried item alone, named as the suspect first."""
    job_id, chunk_no = claimed.job_id, claimed.chunk_no
    log.warning("job %s chunk %s: attempt %s scores its %d items one at a time to find a poison item",
                job_id, chunk_no, claimed.attempt, len(claimed.items))

    def write(results, cache_rows):
        with session_scope() as session:
            work.record(session, results, cache_rows)

    alone = replace(_options(claimed, settings), batch_size=1)
    for item in claimed.items:
        with session_scope() as session:
            if not chunk_lifecycle.name_suspect(session, job_id, chunk_no, claimed.attempt, item[0]):
                chunks.release_all()
                return  # a newer attempt owns the chunk
        score_items([item], work.model, alone, _lookup(work), write, work.outputs)
    with session_scope() as session:
        _finish(session, job_id, chunk_no, chunks.drop(chunk_no))
