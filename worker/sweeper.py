"""The outbox relay and the watchdog, run periodically by Celery beat.

- chunks committed but never sent (no `enqueued_at`) are sent;
- chunks sent long ago and still not started are sent again (a lost message);
- running chunks whose heartbeat stopped are taken back and sent again, or given up after
  `max_attempts` with their items failed; so are chunks whose message a worker took and never
  started (it died in between);
- jobs whose chunks are all finished are closed.
Sending twice is safe: a chunk is claimed in the database before it runs.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from shared.config import Settings
from shared.db import session_scope
from shared.tables import Chunk, Job, TrainRun, utcnow
from worker import chunk_lifecycle as life

SEND_GRACE_SECONDS = 10.0  # the web front sends right after commit; give it that long


def sweep(settings: Settings, enqueue, enqueue_train=None) -> dict:
    """`enqueue(job_id, chunk_nos)` sends score tasks, `enqueue_train(job_ids)` train tasks; both are
    called after the database work is committed."""
    now = utcnow()
    to_send: dict[str, list[int]] = {}
    given_up = closed = 0
    with session_scope() as s:
        stale = list(s.execute(select(Chunk.job_id, Chunk.chunk_no).where(
            Chunk.state.in_(("running", "delivered")),
            Chunk.heartbeat_at < now - timedelta(seconds=settings.heartbeat_timeout))))
        for job_id, chunk_no in stale:
            job = life.lock_job(s, job_id)
            chunk = s.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == chunk_no)
                             .with_for_update())
            if chunk.state not in ("running", "delivered"):
                continue
            if chunk.state == "running" and chunk.attempts >= settings.max_attempts:
                life.give_up(s, job, chunk,
                             f"gave up after {chunk.attempts} attempts: the worker scoring this chunk died or "
                             "stopped responding each time (a poison item?)")
                given_up += 1
            else:
                chunk.state, chunk.enqueued_at = "queued", None
                to_send.setdefault(job_id, []).append(chunk_no)
        unsent = s.execute(select(Chunk.job_id, Chunk.chunk_no).join(Job, Job.id == Chunk.job_id).where(
            Chunk.state.in_(("pending", "queued")),
            ((Chunk.enqueued_at.is_(None) & (Job.created_at < now - timedelta(seconds=SEND_GRACE_SECONDS)))
             | (Chunk.enqueued_at < now - timedelta(seconds=settings.requeue_after)))))
        for job_id, chunk_no in unsent:
            to_send.setdefault(job_id, []).append(chunk_no)
        open_jobs = list(s.scalars(select(Job.id).where(Job.kind == "score",
                                                        Job.status.in_(("queued", "running")))))
    for job_id in open_jobs:
        with session_scope() as s:
            job = life.lock_job(s, job_id)
            closed += life.finalize_if_complete(s, job)
    sent = sum(enqueue(job_id, sorted(set(nos))) for job_id, nos in to_send.items())
    trains = _sweep_train_runs(settings, now)
    if trains and enqueue_train is not None:
        sent += enqueue_train(trains)
    return {"sent": sent, "given_up": given_up, "closed": closed}


def _sweep_train_runs(settings: Settings, now) -> list[str]:
    """Train runs to (re)send: never sent, lost by the broker, or whose process stopped heartbeating
    (the next attempt resumes from the last checkpoint). Exhausted attempts fail at the next claim."""
    stale_before = now - timedelta(seconds=settings.heartbeat_timeout)
    with session_scope() as s:
        rows = s.execute(select(TrainRun.job_id, TrainRun.state, TrainRun.enqueued_at, Job.created_at,
                                Job.heartbeat_at).join(Job, Job.id == TrainRun.job_id)
                         .where(TrainRun.state.in_(("pending", "queued", "delivered", "running")))).all()
        out = []
        for job_id, state, enqueued_at, created_at, heartbeat_at in rows:
            if state in ("running", "delivered"):
                if heartbeat_at is not None and heartbeat_at < stale_before:
                    run = s.get(TrainRun, job_id, with_for_update=True)
                    if run.state in ("running", "delivered"):
                        run.state, run.enqueued_at = "pending", None
                        out.append(job_id)
            elif enqueued_at is None:
                if created_at < now - timedelta(seconds=SEND_GRACE_SECONDS):
                    out.append(job_id)
            elif enqueued_at < now - timedelta(seconds=settings.requeue_after):
                out.append(job_id)
    return out

