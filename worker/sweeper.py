"""The outbox relay and the watchdog, run periodically by Celery beat on the maintenance queue.

- chunks committed but never sent (no `enqueued_at`) are sent;
- queued chunks whose message the broker lost (it restarted without persistence, or a message was
  acknowledged without its work done) are sent again: when the queue holds fewer messages than the
  chunks queued for over `lost_after` seconds, those chunks are sent again (a duplicate is harmless,
  a chunk is claimed in the database before it runs); `requeue_after` remains the last resort;
- running chunks whose heartbeat stopped are taken back (chunk_lifecycle.take_back) and sent again;
  so are chunks whose message a worker took and never started (it died in between);
- train runs likewise;
- import jobs committed but never sent, or sent over `requeue_after` ago and not final, are sent (again: the
  import task skips a final job and finishes a job once, worker/model_importer.py); their staging files left
  by a crash are removed after `orphan_upload_after`;
- index jobs likewise, and also when their worker died mid-build (no heartbeat for `heartbeat_timeout`); index
  folders no version uses (a run killed before it registered) are removed after `orphan_upload_after`;
- score and embed jobs preparing (their large manifest read into items on the maintenance worker) whose task was
  never sent, or was sent over `requeue_after` ago and shows no progress since, or whose progress stopped for
  `heartbeat_timeout` (its worker died), are sent again (the reader resumes after the rows it counted:
  shared/services/preparation.py);
- jobs whose chunks are all finished are closed;
- score jobs that succeeded without their output drift recorded get it: those this sweep closed (including by
  giving up their last chunk), and those closed elsewhere without it (a chunk given up at a worker's claim, a worker
  that died between finishing the last chunk and recording it), among the jobs created within `DRIFT_CATCH_UP`;
- score and embed jobs that succeeded with an `export` still pending get it written (shared/services/job_exports.py):
  the same catch-up as drift, every sweep tries again an export whose store was away, and one whose writer died
  (its lease older than `heartbeat_timeout`) is taken over;
- upload folders of jobs finished over `upload_retention` ago, and folders no job owns (an upload cut
  off by a web crash) older than `orphan_upload_after`, are removed; so are uploads in parts that no job took and
  nobody added to for `orphan_upload_after` (shared/services/uploads.py);
- the time of the sweep is recorded, for /readyz and /metrics.
Recovery after a lost message is thus bounded by lost_after + sweep_interval, after a dead worker by
heartbeat_timeout + sweep_interval.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, select

from shared.core import liveness
from shared.core.celery_app import SCORE_QUEUE, TRAIN_QUEUE
from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.states import (
    CHUNKED_JOB_KINDS,
    FINAL_JOB_STATUSES,
    OPEN_JOB_STATUSES,
    TAKEN_CHUNK_STATES,
    TAKEN_RUN_STATES,
    TERMINAL_RUN_STATES,
    UNSENT_CHUNK_STATES,
    ChunkState,
    JobKind,
    JobStatus,
    RunState,
)
from shared.core.tables import Chunk, Job, ScoreDrift, TrainRun, utcnow
from shared.services import drift, job_exports, upload_files, uploads
from shared.services.jobs import lock_job
from worker import chunk_lifecycle, index_builder, model_importer

log = logging.getLogger(__name__)
SEND_GRACE_SECONDS = 10.0  # the web front sends right after commit; give it that long
DRIFT_CATCH_UP = timedelta(days=7)  # score jobs created this recently (ix_jobs_status_created) are caught up


def sweep(settings: Settings, enqueue, enqueue_train=None,
          queue_depth: Callable[[str], int | None] | None = None, enqueue_imports=None, enqueue_index=None,
          enqueue_preparation=None) -> dict:
    """`enqueue(job_id, chunk_nos)` sends score tasks, `enqueue_train(job_ids)` train tasks,
    `enqueue_imports(job_ids)` import tasks, `enqueue_index(job_ids)` index tasks and `enqueue_preparation(job_ids)`
    manifest preparations, all after the database work is committed; `queue_depth(queue)` counts a queue's messages
    (None: unknown)."""
    now = utcnow()
    depth = queue_depth or (lambda _queue: None)
    to_send, given_up, closed_ids = _take_back_dead_chunks(settings, now)
    for job_id, chunk_no in _unsent_or_lost_chunks(settings, now, depth(SCORE_QUEUE)):
        to_send.setdefault(job_id, []).append(chunk_no)
    finished = _close_finished_jobs(settings)
    closed = len(finished)
    record_missing_drift(settings, now, closed_ids | finished)
    write_pending_exports(settings, now, closed_ids | finished)
    sent = sum(enqueue(job_id, sorted(set(nos))) for job_id, nos in to_send.items())
    trains = _sweep_train_runs(settings, now, depth(TRAIN_QUEUE))
    if trains and enqueue_train is not None:
        sent += enqueue_train(trains)
    for kind, send in ((JobKind.IMPORT, enqueue_imports), (JobKind.INDEX, enqueue_index)):
        waiting = _unsent_jobs(settings, now, kind) if send is not None else []
        sent += send(waiting) if waiting else 0
    stalled = _stalled_preparations(settings, now) if enqueue_preparation is not None else []
    sent += enqueue_preparation(stalled) if stalled else 0
    removed = remove_old_uploads(settings) + uploads.remove_idle(settings, settings.orphan_upload_after)
    model_importer.remove_stale_staging(settings, settings.orphan_upload_after)
    index_builder.remove_stray_folders(settings, settings.orphan_upload_after)
    stats = {"sent": sent, "given_up": given_up, "closed": closed, "uploads_removed": removed}
    with session_scope() as session:
        liveness.record_beat(session, liveness.SWEEPER, now, stats)
    return stats


def _take_back_dead_chunks(settings: Settings, now) -> tuple[dict[str, list[int]], int, set[str]]:
    """(chunks to send again by job, chunks given up, jobs closed by giving up their last chunk)."""
    to_send: dict[str, list[int]] = {}
    given_up, closed = 0, set()
    with session_scope() as session:
        stale = list(session.execute(select(Chunk.job_id, Chunk.chunk_no).where(
            Chunk.state.in_(TAKEN_CHUNK_STATES),
            Chunk.heartbeat_at < now - timedelta(seconds=settings.heartbeat_timeout))))
    for job_id, chunk_no in stale:  # one transaction per chunk: locks are held briefly
        with session_scope() as session:
            job = lock_job(session, job_id)
            chunk = session.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == chunk_no)
                                   .with_for_update())
            if chunk.state not in TAKEN_CHUNK_STATES or \
                    chunk.heartbeat_at >= now - timedelta(seconds=settings.heartbeat_timeout):
                continue  # it moved on since the first read
            if chunk_lifecycle.take_back(session, job, chunk, settings.max_attempts):
                to_send.setdefault(job_id, []).append(chunk_no)
            elif chunk.state == ChunkState.FAILED:
                given_up += 1
            if job.status in FINAL_JOB_STATUSES:
                closed.add(job_id)
    return to_send, given_up, closed


def _unsent_or_lost_chunks(settings: Settings, now, depth: int | None) -> list[tuple[str, int]]:
    with session_scope() as session:
        unsent = session.execute(select(Chunk.job_id, Chunk.chunk_no).join(Job, Job.id == Chunk.job_id).where(
            Chunk.state.in_(UNSENT_CHUNK_STATES),
            ((Chunk.enqueued_at.is_(None) & (Job.created_at < now - timedelta(seconds=SEND_GRACE_SECONDS)))
             | (Chunk.enqueued_at < now - timedelta(seconds=settings.requeue_after))))).all()
        waiting = select(Chunk.job_id, Chunk.chunk_no).where(
            Chunk.state == ChunkState.QUEUED, Chunk.enqueued_at < now - timedelta(seconds=settings.lost_after))
        lost = []
        if depth is not None:
            count = session.scalar(select(func.count()).select_from(waiting.subquery()))
            if depth < count:
                lost = session.execute(waiting).all()
                log.warning("queue %s holds %d messages for %d chunks queued over %gs: sending them again",
                            SCORE_QUEUE, depth, count, settings.lost_after)
    return [tuple(row) for row in (*unsent, *lost)]


def _close_finished_jobs(settings: Settings) -> set[str]:
    """Score and embed jobs with no open chunk closed (their last chunk ended by giving up); the ids closed."""
    closed = set()
    with session_scope() as session:
        open_jobs = list(session.scalars(select(Job.id).where(Job.kind.in_(CHUNKED_JOB_KINDS),
                                                              Job.status.in_(OPEN_JOB_STATUSES))))
    for job_id in open_jobs:
        with session_scope() as session:
            job = lock_job(session, job_id)
            if chunk_lifecycle.finalize_if_complete(session, job):
                closed.add(job_id)
    return closed


def record_missing_drift(settings: Settings, now, closed_now: set[str]) -> int:
    """The output drift of score jobs that succeeded without one (shared/services/drift.py; written once whoever
    computes it): those this sweep closed, and those closed elsewhere over SEND_GRACE_SECONDS ago (the task that
    closes a job records its drift right after; this catches the ones it could not), among the jobs created within
    DRIFT_CATCH_UP (a range of the status and creation-time index, so each sweep reads a bounded set). Returns how
    many were recorded."""
    with session_scope() as session:
        job_ids = list(session.scalars(
            select(Job.id).outerjoin(ScoreDrift, ScoreDrift.job_id == Job.id).where(
                Job.kind == JobKind.SCORE, Job.status == JobStatus.SUCCEEDED, ScoreDrift.job_id.is_(None),
                Job.created_at >= now - DRIFT_CATCH_UP,
                (Job.finished_at < now - timedelta(seconds=SEND_GRACE_SECONDS)) | Job.id.in_(sorted(closed_now)))))
    recorded = 0
    for job_id in job_ids:
        try:
            recorded += drift.record_job_drift(job_id, settings.drift_threshold) is not None
        except Exception:  # noqa: BLE001 - the sweep goes on: only the job's drift figure is missing
            log.exception("job %s: output drift not recorded", job_id)
    return recorded


def write_pending_exports(settings: Settings, now, closed_now: set[str]) -> int:
    """The result exports of succeeded jobs still pending (tried before, or closed by this sweep or over
    SEND_GRACE_SECONDS ago) or left writing by a process that died (job_exports.to_catch_up), among the jobs created
    within DRIFT_CATCH_UP, written now; a store still away leaves them pending for the next sweep. Returns how many
    were written."""
    with session_scope() as session:
        job_ids = job_exports.to_catch_up(session, closed_now, now - timedelta(seconds=SEND_GRACE_SECONDS),
                                          now - DRIFT_CATCH_UP, now - timedelta(seconds=settings.heartbeat_timeout))
    written = 0
    for job_id in job_ids:
        try:
            written += job_exports.write_export(job_id, settings) == job_exports.WRITTEN
        except Exception:  # noqa: BLE001 - the sweep goes on: this export stays pending for the next one
            log.exception("job %s: results not exported", job_id)
    return written


def _sweep_train_runs(settings: Settings, now, depth: int | None) -> list[str]:
    """Train runs to (re)send: never sent, lost by the broker, or whose process stopped heartbeating
    (the next attempt resumes from the last checkpoint). Exhausted attempts fail at the next claim."""
    from worker.training import lifecycle as train_lifecycle

    stale_before = now - timedelta(seconds=settings.heartbeat_timeout)
    lost_before = now - timedelta(seconds=settings.lost_after)
    with session_scope() as session:
        rows = session.execute(select(TrainRun.job_id, TrainRun.state, TrainRun.enqueued_at, Job.created_at,
                                      Job.heartbeat_at).join(Job, Job.id == TrainRun.job_id)
                               .where(TrainRun.state.not_in(TERMINAL_RUN_STATES))).all()
        waiting = [r.job_id for r in rows if r.state == RunState.QUEUED and r.enqueued_at is not None
                   and r.enqueued_at < lost_before]
        lost = set(waiting) if depth is not None and depth < len(waiting) else set()
        out = []
        for job_id, state, enqueued_at, created_at, heartbeat_at in rows:
            if state in TAKEN_RUN_STATES:
                if heartbeat_at is not None and heartbeat_at < stale_before and \
                        train_lifecycle.take_back(session, job_id, stale_before):
                    out.append(job_id)
            elif enqueued_at is None:
                if created_at < now - timedelta(seconds=SEND_GRACE_SECONDS):
                    out.append(job_id)
            elif job_id in lost or enqueued_at < now - timedelta(seconds=settings.requeue_after):
                out.append(job_id)
    return out


def _unsent_jobs(settings: Settings, now, kind: JobKind) -> list[str]:
    """Import or index jobs never sent (after the web front's grace), or sent over `requeue_after` ago and still
    open (the broker lost the message, or the worker died and nothing redelivered it). An index job also when it
    runs and its progress (which doubles as its heartbeat) stopped for `heartbeat_timeout`: its worker died."""
    stalled = Job.enqueued_at < now - timedelta(seconds=settings.requeue_after)
    if kind == JobKind.INDEX:
        stalled = stalled | ((Job.status == JobStatus.RUNNING)
                             & (Job.heartbeat_at < now - timedelta(seconds=settings.heartbeat_timeout)))
    with session_scope() as session:
        return list(session.scalars(select(Job.id).where(
            Job.kind == kind, Job.status.in_(OPEN_JOB_STATUSES),
            (Job.enqueued_at.is_(None) & (Job.created_at < now - timedelta(seconds=SEND_GRACE_SECONDS)))
            | stalled)))


def _stalled_preparations(settings: Settings, now) -> list[str]:
    """Preparing jobs whose reader is not running: never sent (after the web front's grace), sent over
    `requeue_after` ago and never started, or started and silent for `heartbeat_timeout` (and not sent again since)."""
    silent = now - timedelta(seconds=settings.heartbeat_timeout)
    with session_scope() as session:
        return list(session.scalars(select(Job.id).where(
            Job.status == JobStatus.PREPARING,
            (Job.enqueued_at.is_(None) & (Job.created_at < now - timedelta(seconds=SEND_GRACE_SECONDS)))
            | (Job.heartbeat_at.is_(None) & (Job.enqueued_at < now - timedelta(seconds=settings.requeue_after)))
            | ((Job.heartbeat_at < silent) & (Job.enqueued_at < silent)))))


def remove_old_uploads(settings: Settings) -> int:
    """Remove upload folders of jobs finished over `upload_retention` ago, and folders no job owns that are
    older than `orphan_upload_after` (an upload cut off by a crash of the web front); local folders or prefixes of
    the object store alike (shared/services/upload_files.py: only a folder nobody owns has its files listed)."""
    names = upload_files.folder_names(settings)
    if not names:
        return 0
    retention_cut = utcnow() - timedelta(seconds=settings.upload_retention)
    with session_scope() as session:
        owners = dict(session.execute(select(Job.upload_folder, Job.status).where(
            Job.upload_folder.in_(names))).all())
        expired = set(session.scalars(select(Job.upload_folder).where(
            Job.upload_folder.in_(names), Job.status.in_(FINAL_JOB_STATUSES), Job.finished_at < retention_cut)))
        owners.update(dict.fromkeys(uploads.open_upload_ids(session, names)))  # remove_idle decides for them
        uploads.forget_taken(session, list(expired))
    orphan_cut = time.time() - settings.orphan_upload_after
    removed = 0
    for name in names:
        orphan = name not in owners and upload_files.last_written(settings, name) < orphan_cut
        if name in expired or orphan:
            upload_files.remove_folder(settings, name)
            removed += 1
            log.info("removed upload folder %s (%s)", name, "orphan" if orphan else "retention over")
    return removed
