"""The `preparing` state of a score or embed job whose manifest is too large to read in the request (over
IMGQ_INLINE_MANIFEST_BYTES): committed preparing at once, its manifest read into items piece by piece on the
maintenance worker (worker/manifest_expansion.py), then queued with its chunks, or failed with the reason the
request would have got as a 400.

Invariants:
- While a job is preparing, `total_items` counts the manifest rows read into items so far (`progress.rows_read`). A
  piece's items and that count are written in one transaction under the job lock, so they always agree.
- A reader run again (the task delivered twice, re-sent by the sweeper after a worker died, or two at once) skips the
  rows already counted: no item is inserted twice or lost. Two readers take turns on the job lock; each inserts only
  rows beyond the count. An id seen twice in the manifest hits job_items' key (job, item id), as in the request.
- The chunks come from the items themselves, in the transaction that moves the job to queued (`finish`), and are
  sent only after it committed (shared/core/dispatch.enqueue_chunks; the sweeper sends what was not).
- One function per transition, each taking the job lock: preparing -> queued (`finish`), preparing -> failed
  (`fail`). A job canceled meanwhile (shared/services/jobs.cancel_job) stops its reader at the next piece.
"""
from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from shared.core.errors import InvalidRequest
from shared.core.states import JobKind, JobStatus
from shared.core.tables import Job, JobItem, ModelVersion, utcnow
from shared.services import jobs


def create_preparing_job(session: Session, kind: JobKind, *, model_ref: str, source: dict, use_cache: bool,
                         spec_for: Callable[[ModelVersion], dict] | None = None) -> Job:
    """A score or embed job over the manifest `source` names (its uri and column mapping), preparing, without items:
    the maintenance worker reads them (the caller commits, then sends it: shared/core/dispatch.enqueue_preparation)."""
    return jobs.new_item_job(session, kind, JobStatus.PREPARING, model_ref=model_ref, source=source,
                             use_cache=use_cache, spec_for=spec_for)


def record_piece(session: Session, job_id: str, first: int, piece: list[tuple], chunk_size: int) -> int | None:
    """Insert the items of a piece of the manifest (its first row is row `first`) the job has not counted yet, and
    count them. Returns the rows read so far, or None when the job is no longer preparing (canceled, failed, or
    finished by another reader). A bad item or a duplicate id is an InvalidRequest (the caller then calls `fail`).
    Locks the job row."""
    job = jobs.lock_job(session, job_id)
    if job is None or job.status != JobStatus.PREPARING:
        return None
    if first > job.total_items:
        raise RuntimeError(f"job {job_id}: piece at row {first} but only {job.total_items} rows were read")
    skip = job.total_items - first
    if skip < len(piece):
        job.total_items += jobs.add_items(session, job_id, piece[skip:], first + skip, chunk_size)
    job.heartbeat_at = utcnow()  # the sweeper's sign that a reader is alive
    return job.total_items


def finish(session: Session, job_id: str) -> int | None:
    """preparing -> queued once every row is read: the job's chunks are inserted, pending, from its items' chunk
    numbers. Returns how many chunks, or None when the job is no longer preparing. An empty manifest is an
    InvalidRequest, as in the request. Locks the job row."""
    job = jobs.lock_job(session, job_id)
    if job is None or job.status != JobStatus.PREPARING:
        return None
    if job.total_items == 0:
        raise InvalidRequest("the job has no items", field="items")
    counts = dict(session.execute(select(JobItem.chunk_no, func.count()).where(JobItem.job_id == job_id)
                                  .group_by(JobItem.chunk_no)).all())
    jobs.add_chunks(session, job, [counts.get(no, 0) for no in range(max(counts) + 1)])
    job.status, job.heartbeat_at = JobStatus.QUEUED, None
    return job.total_chunks


def fail(session: Session, job_id: str, reason: str) -> bool:
    """preparing -> failed with `reason` (a manifest that turned out bad part-way); the items read so far are
    deleted. Returns False when the job was no longer preparing. Locks the job row."""
    job = jobs.lock_job(session, job_id)
    if job is None or job.status != JobStatus.PREPARING:
        return False
    session.execute(delete(JobItem).where(JobItem.job_id == job_id))
    job.status, job.error, job.finished_at, job.total_items = JobStatus.FAILED, reason, utcnow(), 0
    return True
