"""A chunk's life in the database: claim, record results batch by batch, finish, give up.

Every write is idempotent: results are inserted with ON CONFLICT DO NOTHING and the job's
counters grow only by the rows really inserted, so a chunk delivered twice counts once.
Locks are taken job row first, then chunk row, everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from shared.db import insert_ignoring_conflicts
from shared.jobs import FINAL
from shared.tables import Chunk, Job, JobItem, ModelVersion, Result, ScoreCache, utcnow

TERMINAL_CHUNK_STATES = ("done", "failed", "canceled")


@dataclass
class ClaimedChunk:
    job_id: str
    chunk_no: int
    attempt: int
    model_version: ModelVersion
    use_cache: bool
    items: list[tuple[str, str]]  # (item id, uri) still without a result


def lock_job(session: Session, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


def model_for(session: Session, job_id: str, chunk_no: int) -> ModelVersion | str:
    """The model version a chunk needs (read only), or why the chunk need not run."""
    row = session.execute(select(Job.status, Job.model_version_id, Chunk.state)
                          .join(Chunk, Chunk.job_id == Job.id)
                          .where(Job.id == job_id, Chunk.chunk_no == chunk_no)).first()
    if row is None:
        return "unknown chunk"
    if row.state in TERMINAL_CHUNK_STATES:
        return f"chunk already {row.state}"
    version = session.get(ModelVersion, row.model_version_id)
    session.expunge(version)
    return version


def mark_delivered(session: Session, job_id: str, chunk_no: int, worker: str) -> None:
    """A worker took the chunk's message off the queue: from now on its silence is visible. A worker
    killed between taking a message and claiming the chunk would otherwise leave it queued, its
    message held by a dead consumer until the broker's visibility timeout."""
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == chunk_no,
                                        Chunk.state.in_(("pending", "queued")))
                    .values(state="delivered", worker=worker, heartbeat_at=utcnow()))


def claim(session: Session, job_id: str, chunk_no: int, *, worker: str,
          heartbeat_timeout: float, max_attempts: int) -> ClaimedChunk | str:
    """Take a chunk for this worker, or say why not (a string)."""
    job = lock_job(session, job_id)
    chunk = session.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == chunk_no)
                           .with_for_update())
    if job is None or chunk is None:
        return "unknown chunk"
    now = utcnow()
    if chunk.state in TERMINAL_CHUNK_STATES:
        return f"chunk already {chunk.state}"
    if job.status in FINAL:
        chunk.state, chunk.finished_at = "canceled", now
        return f"job is {job.status}"
    if chunk.state == "running" and chunk.heartbeat_at is not None and \
            (now - chunk.heartbeat_at).total_seconds() < heartbeat_timeout:
        return "chunk is running on another worker"
    if chunk.attempts >= max_attempts:
        give_up(session, job, chunk,
                f"gave up after {chunk.attempts} attempts: the worker scoring this chunk died or stopped "
                "responding each time (a poison item?)")
        return "attempts exhausted"
    chunk.state, chunk.attempts, chunk.worker = "running", chunk.attempts + 1, worker
    chunk.started_at = chunk.heartbeat_at = now
    if job.status == "queued":
        job.status, job.started_at = "running", now
    job.heartbeat_at = now
    items = list(session.execute(
        select(JobItem.item_id, JobItem.uri)
        .outerjoin(Result, and_(Result.job_id == JobItem.job_id, Result.item_id == JobItem.item_id))
        .where(JobItem.job_id == job_id, JobItem.chunk_no == chunk_no, Result.item_id.is_(None))
        .order_by(JobItem.item_id)))
    version = session.get(ModelVersion, job.model_version_id)
    session.expunge(version)
    return ClaimedChunk(job_id, chunk_no, chunk.attempts, version, job.use_cache, items)


def record_batch(session: Session, job_id: str, chunk_no: int, results: list[dict],
                 cache_rows: list[dict]) -> int:
    """Insert result rows (and score-cache rows); count only the rows that are new. Also a heartbeat."""
    now = utcnow()
    for r in results:
        r.setdefault("job_id", job_id)
        r.setdefault("created_at", now)
        r.setdefault("from_cache", False)
        r.setdefault("outputs", None)
        r.setdefault("error", None)
        r.setdefault("content_hash", None)
    inserted = {row.item_id for row in
                insert_ignoring_conflicts(session, Result.__table__, results, ["job_id", "item_id"])}
    new = [r for r in results if r["item_id"] in inserted]
    for row in cache_rows:
        row.setdefault("created_at", now)
    insert_ignoring_conflicts(session, ScoreCache.__table__, cache_rows, ["content_hash", "model_version_id"])
    session.execute(update(Job).where(Job.id == job_id).values(
        done_items=Job.done_items + len(new),
        failed_items=Job.failed_items + sum(r["status"] == "error" for r in new),
        cached_items=Job.cached_items + sum(bool(r["from_cache"]) for r in new),
        heartbeat_at=now))
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == chunk_no,
                                        Chunk.state == "running").values(heartbeat_at=now))
    return len(new)


def finish(session: Session, job_id: str, chunk_no: int, state: str = "done", error: str | None = None) -> None:
    job = lock_job(session, job_id)
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == chunk_no,
                                        Chunk.state.not_in(TERMINAL_CHUNK_STATES))
                    .values(state=state, finished_at=utcnow(), error=error))
    if job is not None:
        finalize_if_complete(session, job)


def finalize_if_complete(session: Session, job: Job) -> bool:
    """Mark a score job succeeded once no chunk is left to run. The caller holds the job row lock."""
    if job.status in FINAL or job.kind != "score":
        return False
    open_chunks = session.scalar(select(func.count()).select_from(Chunk).where(
        Chunk.job_id == job.id, Chunk.state.not_in(TERMINAL_CHUNK_STATES)))
    if open_chunks:
        return False
    job.status, job.finished_at = "succeeded", utcnow()
    return True


def give_up(session: Session, job: Job, chunk: Chunk, reason: str) -> None:
    """Mark every item of the chunk still without a result as failed with `reason`."""
    missing = list(session.scalars(
        select(JobItem.item_id)
        .outerjoin(Result, and_(Result.job_id == JobItem.job_id, Result.item_id == JobItem.item_id))
        .where(JobItem.job_id == job.id, JobItem.chunk_no == chunk.chunk_no, Result.item_id.is_(None))))
    record_batch(session, job.id, chunk.chunk_no,
                 [{"item_id": i, "status": "error", "error": reason} for i in missing], [])
    chunk.state, chunk.finished_at, chunk.error = "failed", utcnow(), reason
    session.flush()
    finalize_if_complete(session, job)


def release(session: Session, job_id: str, chunk_no: int, error: str) -> None:
    """Hand a chunk back after an unexpected error, for the sweeper to send again (attempts stay counted)."""
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == chunk_no,
                                        Chunk.state == "running")
                    .values(state="pending", enqueued_at=None, error=error[:2000]))


def fail_job(session: Session, job_id: str, reason: str) -> None:
    """A job-level failure (e.g. its model cannot be loaded): no chunk of it will run."""
    job = lock_job(session, job_id)
    if job is None or job.status in FINAL:
        return
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.state.not_in(TERMINAL_CHUNK_STATES))
                    .values(state="failed", finished_at=utcnow(), error=reason))
    job.status, job.error, job.finished_at = "failed", reason, utcnow()


def lookup_cache(session: Session, model_version_id: int, hashes: list[str]) -> dict[str, dict]:
    if not hashes:
        return {}
    rows = session.execute(select(ScoreCache.content_hash, ScoreCache.outputs).where(
        ScoreCache.model_version_id == model_version_id, ScoreCache.content_hash.in_(set(hashes))))
    return {digest: outputs for digest, outputs in rows}


def stale_before(seconds: float):
    return utcnow() - timedelta(seconds=seconds)
