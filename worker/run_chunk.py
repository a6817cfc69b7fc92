"""One chunk from claim to finish: the whole body of the score task, without Celery."""
from __future__ import annotations

import logging

from shared.config import Settings
from shared.db import session_scope
from worker import chunk_lifecycle as life
from worker.model_cache import ModelCache
from worker.scoring import ScoreOptions, score_items

log = logging.getLogger(__name__)


def run_chunk(job_id: str, chunk_no: int, *, worker: str, models: ModelCache, settings: Settings) -> str:
    """Returns what happened, for the log: 'done', or why the chunk was skipped.

    The model is loaded before the chunk is claimed, so a slow first load never looks like a
    dead worker to the sweeper.
    """
    with session_scope() as s:
        version = life.model_for(s, job_id, chunk_no)
    if isinstance(version, str):
        log.info("chunk %s/%s skipped: %s", job_id, chunk_no, version)
        return version
    try:
        model = models.get(version)
    except Exception as exc:  # a model that cannot load fails the whole job, clearly
        reason = f"cannot load model {version.name}@{version.version}: {exc}"
        log.error("job %s: %s", job_id, reason)
        with session_scope() as s:
            life.fail_job(s, job_id, reason)
        return "model failed to load"
    with session_scope() as s:
        claimed = life.claim(s, job_id, chunk_no, worker=worker, heartbeat_timeout=settings.heartbeat_timeout,
                             max_attempts=settings.max_attempts)
    if isinstance(claimed, str):
        log.info("chunk %s/%s skipped: %s", job_id, chunk_no, claimed)
        return claimed

    def lookup(hashes):
        with session_scope() as s:
            return life.lookup_cache(s, claimed.model_version.id, hashes)

    def write(results, cache_rows):
        with session_scope() as s:
            life.record_batch(s, job_id, chunk_no, results, cache_rows)

    opts = ScoreOptions(roots=settings.readable_roots, batch_size=settings.batch_size,
                        max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes,
                        threads=settings.decode_threads, use_cache=claimed.use_cache)
    try:
        score_items(claimed.items, model, opts, lookup, write)
    except BaseException as exc:  # results so far are kept; the rest is retried, attempts bounded
        with session_scope() as s:
            life.release(s, job_id, chunk_no, f"{type(exc).__name__}: {exc}")
        raise
    with session_scope() as s:
        life.finish(s, job_id, chunk_no)
    return "done"
