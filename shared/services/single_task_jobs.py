"""The claim shared by jobs that one task runs whole (model imports, vector index builds), as opposed to score and
embed jobs (chunks, worker/chunk_lifecycle.py) and train jobs (train runs, worker/training/lifecycle.py)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.states import OPEN_JOB_STATUSES, JobKind, JobStatus
from shared.core.tables import Job, utcnow


def claim(session: Session, job_id: str, kind: JobKind) -> Job | None:
    """queued|running -> running, under the job row's lock. None when the job is final or missing (nothing to do).
    A running job is taken again: its worker died, or a second message for it arrived."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.kind == kind).with_for_update())
    if job is None or job.status not in OPEN_JOB_STATUSES:
        return None
    now = utcnow()
    job.status, job.heartbeat_at = JobStatus.RUNNING, now
    job.started_at = job.started_at or now
    return job
