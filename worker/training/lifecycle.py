"""A train run's life in the database: claim, heartbeat and progress, epochs, finish, give up.

Every transition after `claim` is fenced by the attempt number where the caller knows it (the
supervising task, and the training process it starts with the attempt on its command line): an
attempt that lost the run to a newer one (it was presumed dead) changes nothing.
"""
from __future__ import annotations

from sqlalchemy import delete, select, true, update
from sqlalchemy.orm import Session

from shared.core.states import (
    FINAL_JOB_STATUSES,
    TAKEN_RUN_STATES,
    TERMINAL_RUN_STATES,
    UNSENT_RUN_STATES,
    JobStatus,
    RunState,
)
from shared.core.tables import Job, TrainMetric, TrainRun, utcnow
from shared.services.jobs import lock_job


def _fence(attempt: int | None):
    """The attempt still owns the run (no condition when the caller does not say which attempt it is)."""
    return true() if attempt is None else (TrainRun.attempts == attempt) & (TrainRun.state == RunState.RUNNING)


def mark_delivered(session: Session, job_id: str, worker: str) -> None:
    """pending|queued -> delivered: a trainer took the job's message; its silence from now on is visible to the
    sweeper."""
    session.execute(update(TrainRun).where(TrainRun.job_id == job_id, TrainRun.state.in_(UNSENT_RUN_STATES))
                    .values(state=RunState.DELIVERED, worker=worker))
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))


def claim(session: Session, job_id: str, *, worker: str, heartbeat_timeout: float, max_attempts: int) -> TrainRun | str:
    """pending|queued|delivered|running(dead) -> running, attempt + 1 (or failed when attempts are exhausted, or
    canceled with its job); or say why not (a string). Locks the job row, then the run."""
    job = lock_job(session, job_id)
    run = session.get(TrainRun, job_id, with_for_update=True)
    if job is None or run is None:
        return "unknown train job"
    now = utcnow()
    if run.state in TERMINAL_RUN_STATES:
        return f"train job already {run.state}"
    if job.status in FINAL_JOB_STATUSES:
        run.state = RunState.CANCELED
        return f"job is {job.status}"
    if run.state == RunState.RUNNING and run.worker != worker and job.heartbeat_at is not None and \
            (now - job.heartbeat_at).total_seconds() < heartbeat_timeout:
        return "train job is running on another worker"
    if run.attempts >= max_attempts:
        fail(session, job_id, f"gave up after {run.attempts} attempts: the training process died each time")
        return "attempts exhausted"
    run.state, run.attempts, run.worker = RunState.RUNNING, run.attempts + 1, worker
    job.status, job.heartbeat_at = JobStatus.RUNNING, now
    job.started_at = job.started_at or now
    session.flush()
    return run


SUPERSEDED = "superseded"


def owns(session: Session, job_id: str, attempt: int | None) -> bool:
    """The attempt still owns the run (always true when the caller does not say which attempt it is)."""
    return attempt is None or session.scalar(select(TrainRun.job_id).where(TrainRun.job_id == job_id,
                                                                           _fence(attempt))) is not None


def heartbeat(session: Session, job_id: str, attempt: int | None = None, **progress) -> str:
    """Record liveness and progress; returns the job's status so the trainer can stop when canceled, or
    SUPERSEDED (writing nothing) when a newer attempt owns the run: the caller must stop at once."""
    if not owns(session, job_id, attempt):
        return SUPERSEDED
    now = utcnow()
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now))
    if progress:
        session.execute(update(TrainRun).where(TrainRun.job_id == job_id).values(**progress))
    return session.scalar(select(Job.status).where(Job.id == job_id))


def start_attempt(session: Session, job_id: str) -> TrainRun:
    """Drop epoch metrics after the last checkpoint: the resumed run writes them again, once."""
    run = session.get(TrainRun, job_id)
    session.execute(delete(TrainMetric).where(TrainMetric.job_id == job_id, TrainMetric.epoch > run.checkpoint_epoch))
    if run.checkpoint_epoch:
        run.resumed_from_epoch = run.checkpoint_epoch
    run.epoch = run.checkpoint_epoch
    return run


def record_epoch(session: Session, job_id: str, epoch: int, metrics: dict, seconds: float,
                 checkpoint_path: str, attempt: int | None = None) -> None:
    """Epoch `epoch` (1-based) finished and its checkpoint file is written: both become visible together."""
    if attempt is not None and session.scalar(select(TrainRun.attempts).where(TrainRun.job_id == job_id)
                                              .with_for_update()) != attempt:
        return  # a newer attempt owns the run and writes its own epochs
    session.execute(delete(TrainMetric).where(TrainMetric.job_id == job_id, TrainMetric.epoch >= epoch))
    session.add(TrainMetric(job_id=job_id, epoch=epoch, metrics=metrics, seconds=seconds))
    session.execute(update(TrainRun).where(TrainRun.job_id == job_id).values(
        epoch=epoch, checkpoint_epoch=epoch, checkpoint_path=checkpoint_path, step=0))
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))


def succeed(session: Session, job_id: str, attempt: int | None = None, **outcome) -> bool:
    """running(attempt) -> done, and the job succeeded. Locks the job row. False if the attempt lost the run."""
    job = lock_job(session, job_id)
    owned = session.execute(update(TrainRun).where(TrainRun.job_id == job_id, _fence(attempt))
                            .values(state=RunState.DONE, phase="done", **outcome)).rowcount
    if owned and job.status not in FINAL_JOB_STATUSES:
        job.status, job.finished_at = JobStatus.SUCCEEDED, utcnow()
    return bool(owned)


def canceled(session: Session, job_id: str, attempt: int | None = None) -> None:
    """running(attempt) -> canceled (the job was canceled by a client; its status already says so)."""
    session.execute(update(TrainRun).where(TrainRun.job_id == job_id, _fence(attempt))
                    .values(state=RunState.CANCELED, phase="canceled"))


def take_back(session: Session, job_id: str, stale_before) -> bool:
    """delivered|running(dead) -> pending, for the sweeper to send again (the next attempt resumes from the
    last checkpoint). Locks the job row, then the run, and checks again under the lock that the heartbeat
    is older than `stale_before` (a claim may have committed since the caller looked)."""
    job = lock_job(session, job_id)
    run = session.get(TrainRun, job_id, with_for_update=True)
    if run is None or run.state not in TAKEN_RUN_STATES or \
            (job.heartbeat_at is not None and job.heartbeat_at >= stale_before):
        return False
    run.state, run.enqueued_at = RunState.PENDING, None
    return True


def release(session: Session, job_id: str, attempt: int, error: str) -> bool:
    """running(attempt) -> pending: hand a run back for another attempt (it resumes from its last checkpoint)."""
    owned = session.execute(update(TrainRun).where(TrainRun.job_id == job_id, _fence(attempt))
                            .values(state=RunState.PENDING, enqueued_at=None)).rowcount
    if owned:
        session.execute(update(Job).where(Job.id == job_id).values(error=error[-2000:]))
    return bool(owned)


def fail(session: Session, job_id: str, reason: str, attempt: int | None = None) -> None:
    """any -> failed, with the job. Locks the job row. With `attempt`, only while that attempt owns the run."""
    job = lock_job(session, job_id)
    owned = session.execute(update(TrainRun).where(TrainRun.job_id == job_id, _fence(attempt))
                            .values(state=RunState.FAILED, phase="failed")).rowcount
    if owned and job is not None and job.status not in FINAL_JOB_STATUSES:
        job.status, job.error, job.finished_at = JobStatus.FAILED, reason[-4000:], utcnow()
