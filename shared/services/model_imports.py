"""Model imports as jobs of kind `import`: staged by the web front, run by the maintenance worker
(worker/model_importer.py), recorded here.

The lifecycle of an import job, one function per transition:
- `create_import_job` (web front): a `queued` job whose `source` holds the model name, the signature and the
  uploaded file's name as the client sent it; the file itself waits at `staging_path(store, job_id)`.
- `claim`: queued|running -> running, under the job row's lock. A final job is left alone, so a redelivered
  or re-sent task does nothing. A running job is taken again (its worker died, or a second message arrived).
- `store_version`: running -> succeeded in the same transaction that stores the version; `fail`: running -> failed.
  Both are a conditional UPDATE on a status that is not final, so of two runs of one import only the first to
  write finishes it (PostgreSQL re-checks the row after the lock, SQLite orders writers).
Invariants: the staging file is removed once the job is final (the sweeper removes any left by a crash after
`IMGQ_ORPHAN_UPLOAD_AFTER`); a job's error names the uploaded file by its own name, never by a server path.
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.core import names
from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.paths import path_inside
from shared.core.states import FINAL_JOB_STATUSES, OPEN_JOB_STATUSES, JobKind, JobStatus
from shared.core.tables import Job, ModelVersion, utcnow
from shared.services import model_registry as registry
from shared.services import single_task_jobs

log = logging.getLogger(__name__)

STAGING = ".staging"  # a folder of the model store; no model name starts with "."
STORE_TRIES = 3  # two imports of one name may race for the next version number


def new_job_id() -> str:
    return str(uuid.uuid4())


def staging_dir(store: Path) -> Path:
    return path_inside(store, STAGING)


def staging_path(store: Path, job_id: str) -> Path:
    """Where the uploaded file of import job `job_id` waits for the maintenance worker."""
    return path_inside(store, STAGING, f"{job_id}.keras")


def create_import_job(session: Session, job_id: str, *, name: str, signature: registry.Signature, shown: str,
                      description: str | None, promote: bool | None, token_id: int | None) -> Job:
    """-> queued. Insert the job in the caller's transaction; the caller commits, then calls
    shared.core.dispatch.enqueue_imports. The name and signature are checked here (a 400 before anything runs)."""
    names.check_name(name)
    signature.validated()
    job = Job(id=job_id, kind=JobKind.IMPORT, status=JobStatus.QUEUED, model_ref=name, token_id=token_id,
              use_cache=False,
              source={"type": JobKind.IMPORT.value, "name": name, "file": shown, "signature": signature.as_columns(),
                      "description": description, "promote": promote},
              total_items=1, done_items=0, failed_items=0, cached_items=0, total_chunks=0)
    session.add(job)
    return job


def claim(session: Session, job_id: str) -> dict | None:
    """queued|running -> running, under the job row's lock. Returns the job's source, or None when the job is
    final or missing (nothing to do)."""
    job = single_task_jobs.claim(session, job_id, JobKind.IMPORT)
    return None if job is None else dict(job.source)


def _finish(session: Session, job_id: str, status: JobStatus, error: str | None = None) -> bool:
    """queued|running -> succeeded|failed, once (a conditional UPDATE takes the row's lock). False when the
    job was already final."""
    done = session.execute(update(Job).where(Job.id == job_id, Job.status.in_(OPEN_JOB_STATUSES)).values(
        status=status, error=error, finished_at=utcnow(), done_items=1,
        failed_items=int(status == JobStatus.FAILED)))
    return done.rowcount == 1


def store_version(settings: Settings, job_id: str, source: dict, staged: Path, shapes: dict) -> str | None:
    """running -> succeeded, with the staged file stored as the new version (`shapes`: what
    model_registry.inspect_file said of it), in one transaction. Returns "name@N", or None if the job was final
    already."""
    for attempt in range(1, STORE_TRIES + 1):
        try:
            with session_scope() as session:
                if not _finish(session, job_id, JobStatus.SUCCEEDED):
                    return None
                row = registry.import_model(
                    session, staged, source["name"], registry.Signature(**source["signature"]),
                    settings.model_store, description=source.get("description"), promote=source.get("promote"),
                    shown=source["file"], shapes=shapes, settings=settings)
                session.execute(update(Job).where(Job.id == job_id).values(model_version_id=row.id))
                return f"{row.name}@{row.version}"
        except IntegrityError:
            if attempt == STORE_TRIES:
                raise
            log.info("import job %s: version number taken by a concurrent import; trying again", job_id)
            time.sleep(0.2 * attempt)


def fail(job_id: str, reason: str) -> bool:
    """running -> failed with `reason` (a message for the client), unless the job is final already."""
    with session_scope() as session:
        return _finish(session, job_id, JobStatus.FAILED, reason)


def import_json(session: Session, job: Job) -> dict:
    """The model and progress parts of an import job's description (shared.services.jobs.job_json)."""
    source = job.source or {}
    version = session.get(ModelVersion, job.model_version_id) if job.model_version_id else None
    result = f"{version.name}@{version.version}" if version is not None else None
    done = job.status in FINAL_JOB_STATUSES
    links = {"version": f"/api/v1/models/{version.name}/versions/{version.version}"} if version else {}
    return {
        "model": {"name": source.get("name"), "file": source.get("file"), "result": result,
                  "task": (source.get("signature") or {}).get("task")},
        "progress": {"total": 1, "done": int(done), "succeeded": int(result is not None),
                     "failed": int(done and result is None), "remaining": int(not done),
                     "percent": 100.0 if done else 0.0,
                     "phase": {JobStatus.QUEUED: "waiting", JobStatus.RUNNING: "inspecting"}.get(job.status, "done")},
        "links": links,
    }
