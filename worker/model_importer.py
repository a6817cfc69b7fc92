"""An import job run by the maintenance worker: the staged file inspected, then stored as the next version.

`run_import` claims the job (shared/services/model_imports.py records every transition), inspects the file in a
subprocess with Keras' safe_mode (shared.services.model_registry.inspect_file: this process loads no TensorFlow)
outside any transaction, then stores the version and finishes the job in one transaction, or fails it with a
reason the client can act on. `remove_stale_staging` (the sweeper) removes staging files a crash left behind.

Invariants: the staging file is removed once the job is final; a job's error names the uploaded file by its own
name, never by a server path; a database outage propagates (the task's message goes back to the queue and the
staging file is kept).
"""
from __future__ import annotations

import logging
import time

from sqlalchemy import select

from shared.core.config import Settings
from shared.core.db import is_outage, session_scope
from shared.core.errors import ImgqError, ModelRejected
from shared.core.states import OPEN_JOB_STATUSES
from shared.core.tables import Job
from shared.services import model_imports
from shared.services import model_registry as registry

log = logging.getLogger(__name__)


def run_import(job_id: str, settings: Settings) -> str:
    """Import the staged file of job `job_id` into the registry. Safe to run twice: a final job is skipped.
    A database outage propagates (the task's message goes back to the queue and the staging file is kept)."""
    with session_scope() as session:
        source = model_imports.claim(session, job_id)
    staged = model_imports.staging_path(settings.model_store, job_id)
    if source is None:
        staged.unlink(missing_ok=True)
        return "skipped"
    shown = source["file"]
    log.info("import job %s: importing %s as %s", job_id, shown, source["name"])
    try:
        if not staged.is_file():
            raise ModelRejected(f"the uploaded file {shown} is no longer on the server; upload it again")
        ref = model_imports.store_version(settings, job_id, source, staged,
                                          registry.inspect_file(staged, shown=shown))
        outcome = "skipped" if ref is None else "succeeded"
        log.info("import job %s: %s", job_id, ref or "already final; nothing done")
    except ImgqError as exc:
        outcome = "failed" if model_imports.fail(job_id, str(exc)) else "skipped"
        log.info("import job %s failed: %s", job_id, exc)
    except Exception as exc:  # the task's boundary: record a reason, never a server path
        if is_outage(exc):
            raise
        log.exception("import job %s failed", job_id)
        reason = f"importing {shown} failed ({type(exc).__name__}); the maintenance worker's log has the details"
        outcome = "failed" if model_imports.fail(job_id, reason) else "skipped"
    staged.unlink(missing_ok=True)
    return outcome


def remove_stale_staging(settings: Settings, older_than: float) -> int:
    """Remove staging files older than `older_than` seconds whose job is final or absent (a web front that died
    before its commit, or a worker that died after the job's end)."""
    folder = model_imports.staging_dir(settings.model_store)
    if not folder.is_dir():
        return 0
    cut = time.time() - older_than
    old = {p.stem: p for p in folder.iterdir() if p.is_file() and p.stat().st_mtime < cut}
    if not old:
        return 0
    with session_scope() as session:
        open_ids = set(session.scalars(select(Job.id).where(Job.id.in_(list(old)), Job.status.in_(OPEN_JOB_STATUSES))))
    for job_id in set(old) - open_ids:
        old[job_id].unlink(missing_ok=True)
        log.info("removed the staging file of import job %s", job_id)
    return len(set(old) - open_ids)
