"""Putting committed chunks, train runs, model imports, index builds and manifest preparations on the queue (the
outbox's relay). Never called inside a transaction."""
from __future__ import annotations

import logging

from sqlalchemy import update

from shared.core.celery_app import (
    BUILD_INDEX_TASK,
    IMPORT_MODEL_TASK,
    MAINTENANCE_QUEUE,
    PREPARE_MANIFEST_TASK,
    SCORE_CHUNK_TASK,
    SCORE_QUEUE,
    TRAIN_QUEUE,
    TRAIN_TASK,
    app,
)
from shared.core.db import session_scope
from shared.core.states import (
    OPEN_JOB_STATUSES,
    UNSENT_CHUNK_STATES,
    UNSENT_RUN_STATES,
    ChunkState,
    JobStatus,
    RunState,
)
from shared.core.tables import Chunk, Job, TrainRun, utcnow

log = logging.getLogger(__name__)


def enqueue_chunks(job_id: str, chunk_nos: list[int]) -> int:
    """Send one task per chunk, then record when. A chunk the broker did not take stays
    without `enqueued_at`, and the sweeper sends it later. Returns how many were sent."""
    sent: list[int] = []
    try:
        with app.producer_or_acquire() as producer:
            for no in chunk_nos:
                app.send_task(SCORE_CHUNK_TASK, args=[job_id, no], queue=SCORE_QUEUE, producer=producer)
                sent.append(no)
    except Exception:  # broker down: the sweeper retries from the database
        log.exception("could not enqueue chunks of job %s; the sweeper will retry", job_id)
    if sent:
        with session_scope() as session:
            session.execute(update(Chunk)
                      .where(Chunk.job_id == job_id, Chunk.chunk_no.in_(sent),
                             Chunk.state.in_(UNSENT_CHUNK_STATES))
                      .values(state=ChunkState.QUEUED, enqueued_at=utcnow()))
    return len(sent)


def _send_each(task: str, queue: str, job_ids: list[str], what: str) -> list[str]:
    """Send `task(job_id)` per job; returns the ids the broker took (the sweeper sends the rest later)."""
    sent: list[str] = []
    try:
        with app.producer_or_acquire() as producer:
            for job_id in job_ids:
                app.send_task(task, args=[job_id], queue=queue, producer=producer)
                sent.append(job_id)
    except Exception:
        log.exception("could not enqueue %s jobs %s; the sweeper will retry", what, job_ids)
    return sent


def enqueue_train(job_ids: list[str]) -> int:
    """Send one train task per job, then record when."""
    sent = _send_each(TRAIN_TASK, TRAIN_QUEUE, job_ids, "train")
    if sent:
        with session_scope() as session:
            session.execute(update(TrainRun).where(TrainRun.job_id.in_(sent), TrainRun.state.in_(UNSENT_RUN_STATES))
                      .values(state=RunState.QUEUED, enqueued_at=utcnow()))
    return len(sent)


def enqueue_imports(job_ids: list[str]) -> int:
    """Send one import task per job to the maintenance queue, then record when."""
    return _enqueue_on_maintenance(IMPORT_MODEL_TASK, job_ids, "import")


def enqueue_index(job_ids: list[str]) -> int:
    """Send one index build (or delta) task per job to the maintenance queue, then record when."""
    return _enqueue_on_maintenance(BUILD_INDEX_TASK, job_ids, "index")


def enqueue_preparation(job_ids: list[str]) -> int:
    """Send one task per preparing score or embed job to the maintenance queue (it reads the job's manifest into
    items: worker/manifest_expansion.py), then record when."""
    return _enqueue_on_maintenance(PREPARE_MANIFEST_TASK, job_ids, "preparing", (JobStatus.PREPARING,))


def _enqueue_on_maintenance(task: str, job_ids: list[str], what: str, statuses=OPEN_JOB_STATUSES) -> int:
    sent = _send_each(task, MAINTENANCE_QUEUE, job_ids, what)
    if sent:
        with session_scope() as session:
            session.execute(update(Job).where(Job.id.in_(sent), Job.status.in_(statuses))
                      .values(enqueued_at=utcnow()))
    return len(sent)


def queue_depth(queue: str) -> int | None:
    """How many messages wait in `queue` on the broker, or None when the broker cannot be asked."""
    try:
        with app.connection_for_write() as conn:
            return conn.default_channel.queue_declare(queue=queue, passive=False).message_count
    except Exception:  # broker down: the sweeper compares again at its next run
        log.warning("could not read the depth of queue %s", queue, exc_info=True)
        return None


def broker_reachable() -> bool:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False
