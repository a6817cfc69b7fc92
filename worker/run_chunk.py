"""One chunk from claim to finish: the whole body of the score task, without Celery.

While the chunk runs, a heartbeat thread writes its liveness at a fixed interval, whatever a batch
costs, so a slow batch never looks like a dead worker. Every write after the claim is fenced by the
attempt number (see worker/chunk_lifecycle.py).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace

from shared.config import Settings
from shared.db import session_scope
from worker import chunk_lifecycle
from worker.model_cache import ModelCache
from worker.scoring import ScoreOptions, score_items

log = logging.getLogger(__name__)


class ChunkHeartbeat(threading.Thread):
    """Writes the attempt's heartbeat every `interval` seconds until stopped; notes when the attempt
    lost its chunk (a newer attempt took it), and keeps beating through a database outage."""

    def __init__(self, job_id: str, chunk_no: int, attempt: int, interval: float):
        super().__init__(name="imgq-heartbeat", daemon=True)
        self.job_id, self.chunk_no, self.attempt, self.interval = job_id, chunk_no, attempt, interval
        self.lost = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                with session_scope() as session:
                    owned = chunk_lifecycle.heartbeat(session, self.job_id, self.chunk_no, self.attempt)
            except Exception:  # the database is away: the next beat tries again
                log.warning("job %s chunk %s: heartbeat failed", self.job_id, self.chunk_no, exc_info=True)
                continue
            if not owned and not self.lost:
                self.lost = True
                log.warning("job %s chunk %s: attempt %s no longer owns the chunk", self.job_id, self.chunk_no,
                            self.attempt)

    def stop(self) -> None:
        self._stop_event.set()


def heartbeat_interval(settings: Settings) -> float:
    return max(0.2, min(10.0, settings.heartbeat_timeout / 4))


def run_chunk(job_id: str, chunk_no: int, *, worker: str, models: ModelCache, settings: Settings) -> str:
    """Returns what happened, for the log: 'done', or why the chunk was skipped.

    The model is loaded before the chunk is claimed, so a slow first load never looks like a
    dead worker to the sweeper.
    """
    with session_scope() as session:
        version = chunk_lifecycle.model_for(session, job_id, chunk_no)
    if isinstance(version, str):
        log.info("job %s chunk %s skipped: %s", job_id, chunk_no, version)
        return version
    try:
        model = models.get(version)
    except Exception as exc:  # a model that cannot load fails the whole job, clearly
        reason = f"cannot load model {version.name}@{version.version}: {exc}"
        log.error("job %s: %s", job_id, reason)
        with session_scope() as session:
            chunk_lifecycle.fail_job(session, job_id, reason)
        return "model failed to load"
    with session_scope() as session:
        claimed = chunk_lifecycle.claim(session, job_id, chunk_no, worker=worker,
                                        heartbeat_timeout=settings.heartbeat_timeout,
                                        max_attempts=settings.max_attempts)
    if isinstance(claimed, str):
        log.info("job %s chunk %s skipped: %s", job_id, chunk_no, claimed)
        return claimed
    beat = ChunkHeartbeat(job_id, chunk_no, claimed.attempt, heartbeat_interval(settings))
    beat.start()
    try:
        _score_claimed(claimed, model, settings)
    except BaseException as exc:  # results so far are kept; the rest is retried, attempts bounded
        beat.stop()
        with session_scope() as session:
            chunk_lifecycle.release(session, job_id, chunk_no, claimed.attempt, f"{type(exc).__name__}: {exc}")
        raise
    beat.stop()
    with session_scope() as session:
        owned = chunk_lifecycle.finish(session, job_id, chunk_no, claimed.attempt)
    if not owned:
        log.info("job %s chunk %s: attempt %s finished after a newer attempt took over", job_id, chunk_no,
                 claimed.attempt)
    return "done"


def _score_claimed(claimed: chunk_lifecycle.ClaimedChunk, model, settings: Settings) -> None:
    job_id, chunk_no = claimed.job_id, claimed.chunk_no

    def lookup(hashes):
        with session_scope() as session:
            return chunk_lifecycle.lookup_cache(session, claimed.model_version.id, hashes)

    def write(results, cache_rows):
        with session_scope() as session:
            chunk_lifecycle.record_batch(session, job_id, chunk_no, results, cache_rows)

    opts = ScoreOptions(roots=settings.readable_roots(claimed.upload_folder), batch_size=settings.batch_size,
                        max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes,
                        threads=settings.decode_threads, use_cache=claimed.use_cache,
                        read_timeout=settings.read_timeout, decode_timeout=settings.decode_timeout)
    if not claimed.isolate:
        score_items(claimed.items, model, opts, lookup, write)
        return
    log.warning("job %s chunk %s: attempt %s scores its %d items one at a time to find a poison item",
                job_id, chunk_no, claimed.attempt, len(claimed.items))
    alone = replace(opts, batch_size=1)
    for item in claimed.items:
        with session_scope() as session:
            if not chunk_lifecycle.name_suspect(session, job_id, chunk_no, claimed.attempt, item[0]):
                return  # a newer attempt owns the chunk
        score_items([item], model, alone, lookup, write)
