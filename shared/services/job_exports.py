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
- One writer at a time: a process claims the export (pending -> writing, compare-and-set) and renews its lease
  (`updated_at`) as it writes; a writing export whose lease is older than IMGQ_HEARTBEAT_TIMEOUT belongs to a dead
  process and a sweep takes it over. Only the claimed export moves on (writing -> written | failed | pending), once.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

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
PENDING, WRITING, WRITTEN, FAILED = "pending", "writing", "written", "failed"
LEASE_RENEWAL = 5.0  # seconds between renewals of a writer's lease
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
    export's status after this call, or None when there was nothing to do (no export, not succeeded, written, or
    another live process writing it)."""
    claimed = _claim(job_id, utcnow() - timedelta(seconds=settings.heartbeat_timeout))
    if claimed is None:
        return None
    uri, rows = claimed
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


def _claim(job_id: str, stale_before) -> tuple[str, int] | None:
    """pending | writing (its lease older than `stale_before`: a dead writer) -> writing, for a succeeded job;
    (its URI, its result count), or None when the export is not this process's to write."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.SUCCEEDED:
            return None
        claimed = session.execute(update(ResultExport).where(
            ResultExport.job_id == job_id,
            (ResultExport.status == PENDING) | ((ResultExport.status == WRITING)
                                                & (ResultExport.updated_at < stale_before)))
            .values(status=WRITING, updated_at=utcnow())).rowcount
        if not claimed:
            return None
        return session.scalar(select(ResultExport.uri).where(ResultExport.job_id == job_id)), job.done_items


def _renew(job_id: str) -> None:
    """The writer's lease, renewed: it is alive and writing."""
    with session_scope() as session:
        session.execute(update(ResultExport).where(ResultExport.job_id == job_id, ResultExport.status == WRITING)
                        .values(updated_at=utcnow()))


def _record(job_id: str, status: str, rows: int | None, error: str | None) -> str:
    """writing -> `status` (written, failed, or pending again), counting the try."""
    with session_scope() as session:
        session.execute(update(ResultExport).where(ResultExport.job_id == job_id, ResultExport.status == WRITING)
                        .values(status=status, rows=rows, error=error, tries=ResultExport.tries + 1,
                                updated_at=utcnow()))
        return session.scalar(select(ResultExport.status).where(ResultExport.job_id == job_id))


def _write(settings: Settings, job_id: str, uri: str) -> None:
    """The job's results streamed into the object at `uri`, in the format its extension names; on any failure the
    upload is aborted, so no partial object is left."""
    pieces = result_exports.results_csv(job_id) if uri.endswith(".csv") else result_exports.results_parquet(job_id)
    fs = object_store.filesystem(object_store.StoreConfig.from_settings(settings), object_store.protocol_of(uri))
    file = fs.open(uri, "wb", block_size=PART_BYTES)
    renewed = time.monotonic()
    try:
        for piece in pieces:
            if piece:
                file.write(piece)
            if time.monotonic() - renewed > LEASE_RENEWAL:
                _renew(job_id)
                renewed = time.monotonic()
        file.close()  # the last part, then the upload's completion (or one PUT for a small file)
    except BaseException:
        try:
            file.discard()
        except Exception:  # noqa: BLE001 - the store may be the reason: an unfinished upload is not an object
            log.info("job %s: the unfinished upload to %s was not aborted", job_id, uri)
        file.closed = True  # nothing left to flush, whatever close() reached
        raise


def to_catch_up(session: Session, job_ids_closed: set[str], finished_before, created_after, stale_before) -> list[str]:
    """Succeeded jobs whose export is pending, tried before (by the finishing task) or closed over a grace ago or by
    this sweep (`job_ids_closed`), or writing under a lease older than `stale_before` (its writer died); among the
    jobs created after `created_after`."""
    pending = (ResultExport.status == PENDING) & (
        (ResultExport.tries > 0) | (Job.finished_at < finished_before) | Job.id.in_(sorted(job_ids_closed)))
    abandoned = (ResultExport.status == WRITING) & (ResultExport.updated_at < stale_before)
    return list(session.scalars(select(ResultExport.job_id).join(Job, Job.id == ResultExport.job_id).where(
        Job.status == JobStatus.SUCCEEDED, Job.created_at >= created_after, pending | abandoned)))
