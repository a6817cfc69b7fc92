"""A score or embed job's results exported to object storage when it succeeds (its `export` option): where it may go,
and writing it once.

Invariants:
- An export goes only under IMGQ_EXPORT_ROOTS (URI prefixes of their own, never the data roots: a job must not
  overwrite the catalog it reads); its URI is fixed when the job is committed (`{job_id}` filled in), checked by
  `shared/core/paths.object_inside` like an item, and refused with a 400 on `export` before anything is stored.
- The file is streamed: the results are read a page at a time in short transactions (shared/services/
  result_exports) and written into an s3fs file opened for writing, which uploads parts of PART_BYTES as they fill
  (a multipart upload), so memory holds one page and one part whatever the job's size.
- The object appears whole or not at all: a write that fails aborts its multipart upload, and S3 shows an object
  only once it is complete.
- Tried by the task that finished the job's last chunk, and by every sweep for a succeeded job whose export is still
  pending (worker/sweeper.py), so a process that died, or a store that was away, delays the export but never loses
  it. A 404 (no such bucket) or a 403 is the export's failure, for good; anything else leaves it pending.
- Recorded once: only a pending export moves to written or failed (compare-and-set on its status). Two processes may
  write the same object at once; it is the same file either way, and the last complete upload stands.
"""
from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.errors import InvalidRequest
from shared.core.paths import OutsideDataRoots, object_inside
from shared.core.states import JobStatus
from shared.core.tables import Job, ResultExport, utcnow
from shared.images import object_store
from shared.schemas.jobs import EXPORT_PLACEHOLDER
from shared.services import result_exports

log = logging.getLogger(__name__)
PENDING, WRITTEN, FAILED = "pending", "written", "failed"
PART_BYTES = 16 * 1024 * 1024  # one part of the multipart upload (S3's smallest is 5 MiB)
_SAMPLE_ID = "00000000-0000-0000-0000-000000000000"


def export_uri(settings: Settings, template: str, job_id: str = _SAMPLE_ID) -> str:
    """The export's URI for `job_id`, proven to lie under IMGQ_EXPORT_ROOTS; else InvalidRequest on `export`."""
    if not settings.export_roots:
        raise InvalidRequest("export: exports are off here (no IMGQ_EXPORT_ROOTS configured)", field="export")
    try:
        return object_inside(settings.export_roots, template.replace(EXPORT_PLACEHOLDER, job_id))
    except OutsideDataRoots as exc:
        reason = str(exc).replace("the data roots", "the export roots (IMGQ_EXPORT_ROOTS)")
        raise InvalidRequest(f"export: {reason}", field="export") from None


def add_export(session: Session, job_id: str, uri: str) -> None:
    """The job's export, pending, in the caller's transaction (the one that inserts the job)."""
    session.add(ResultExport(job_id=job_id, uri=uri, status=PENDING, tries=0, updated_at=utcnow()))


def write_export(job_id: str, settings: Settings) -> str | None:
    """Once the job has succeeded: its results written to its export's URI, and the outcome recorded. Returns the
    export's status after this call, or None when there was nothing to do (no export, not succeeded, done)."""
    with session_scope() as session:
        row = session.get(ResultExport, job_id)
        job = session.get(Job, job_id)
        if row is None or row.status != PENDING or job is None or job.status != JobStatus.SUCCEEDED:
            return None
        uri, rows = row.uri, job.done_items
    try:
        _write(settings, job_id, uri)
    except Exception as exc:  # noqa: BLE001 - sorted: the store refused it for good, or try again later
        kind, reason = object_store.classify(exc)
        status = FAILED if kind in ("missing", "denied") else PENDING
        log.warning("job %s: results not exported to %s (%s): %s", job_id, uri,
                    "failed" if status == FAILED else "to be tried again", reason)
        return _record(job_id, status, None, f"{type(exc).__name__}: {reason}"[:2000])
    log.info("job %s: %d results exported to %s", job_id, rows, uri)
    return _record(job_id, WRITTEN, rows, None)


def _record(job_id: str, status: str, rows: int | None, error: str | None) -> str:
    with session_scope() as session:
        session.execute(update(ResultExport).where(ResultExport.job_id == job_id, ResultExport.status == PENDING)
                        .values(status=status, rows=rows, error=error, tries=ResultExport.tries + 1,
                                updated_at=utcnow()))
        return session.scalar(select(ResultExport.status).where(ResultExport.job_id == job_id))


def _write(settings: Settings, job_id: str, uri: str) -> None:
    """The job's results streamed into the object at `uri`, in the format its extension names; on any failure the
    upload is aborted, so no partial object is left."""
    pieces = result_exports.results_csv(job_id) if uri.endswith(".csv") else result_exports.results_parquet(job_id)
    fs = object_store.filesystem(object_store.StoreConfig.from_settings(settings))
    file = fs.open(uri, "wb", block_size=PART_BYTES)
    try:
        for piece in pieces:
            if piece:
                file.write(piece)
        file.close()  # the last part, then the upload's completion (or one PUT for a small file)
    except BaseException:
        try:
            file.discard()
        except Exception:  # noqa: BLE001 - the store may be the reason: an unfinished upload is not an object
            log.info("job %s: the unfinished upload to %s was not aborted", job_id, uri)
        file.closed = True  # nothing left to flush, whatever close() reached
        raise


def pending_after_finish(session: Session, job_ids_closed: set[str], finished_before, created_after) -> list[str]:
    """Succeeded jobs whose export is still pending: tried before (by the finishing task) or closed over a grace
    ago or by this sweep (`job_ids_closed`), among the jobs created after `created_after`."""
    return list(session.scalars(select(ResultExport.job_id).join(Job, Job.id == ResultExport.job_id).where(
        ResultExport.status == PENDING, Job.status == JobStatus.SUCCEEDED, Job.created_at >= created_after,
        (ResultExport.tries > 0) | (Job.finished_at < finished_before) | Job.id.in_(sorted(job_ids_closed)))))

