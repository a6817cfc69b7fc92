"""Uploads in parts: a folder of files sent over several requests (POST /api/v1/uploads, then .../files as often as
needed), which one score or embed job then takes as its items.

Invariants:
- An upload's files live in the folder <upload id> of IMGQ_UPLOAD_DIR (a local folder, or a prefix in an object
  store: shared/services/upload_files.py), as a single-request upload's do; a file is stored under a name made of the
  hashes of its name and of its bytes, written whole (a temporary file renamed), so two names never share a file and
  a file sent again lands on itself.
- A name (the item id) is stored once per upload: a part sent again adds nothing (`repeated`), and the same name
  with other bytes is a Conflict that refuses the whole part. Totals are counted from the rows, never kept.
- Only the token that made an upload, or an admin, may see, add to, use or delete it (Forbidden otherwise).
- An upload is used once: the job that takes it is recorded on its row in the transaction that creates the job,
  and the folder becomes the job's (`Job.upload_folder`: readable by its chunks, removed by the sweeper after
  IMGQ_UPLOAD_RETENTION). Adding to, deleting or using it again is a Conflict naming that job.
- An upload nobody added to or used for IMGQ_ORPHAN_UPLOAD_AFTER seconds is removed by the sweeper, row and folder.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from datetime import timedelta
from functools import partial
from typing import BinaryIO

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.db import insert_ignoring_conflicts, session_scope
from shared.core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from shared.core.tables import Upload, UploadFile, utcnow
from shared.services import upload_files
from shared.services.tokens import ANYONE, Caller

MAX_NAME = 500  # upload_files.name, job_items.item_id
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}$")
_BLOCK = 1 << 20


def new_upload(settings: Settings, who: Caller = ANYONE) -> dict:
    """An empty upload and its folder (made first: a folder without its row is an orphan the sweeper removes)."""
    upload_id = uuid.uuid4().hex
    upload_files.make_folder(settings, upload_id)
    with session_scope() as session:
        row = Upload(id=upload_id, token_id=who.token_id)
        session.add(row)
        session.flush()
        return upload_json(session, row)


def find_upload(session: Session, upload_id: str, who: Caller = ANYONE, *, lock: bool = False,
                field: str | None = None) -> Upload:
    """The upload, if `who` may act on it (locked for the caller's transaction when `lock`); NotFound or Forbidden
    naming `field` (the request's field that names it) when given."""
    where = {"field": field} if field else {}
    query = select(Upload).where(Upload.id == upload_id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFound(f"no upload {upload_id}", **where)
    if not who.is_admin and row.token_id != who.token_id:
        raise Forbidden("only the token that made this upload, or an admin token, may use it", **where)
    return row


def _unused(row: Upload, doing: str, field: str | None = None) -> None:
    if row.job_id is not None:
        raise Conflict(f"upload {row.id} was taken by job {row.job_id}; it can no longer {doing}", job=row.job_id,
                       **({"field": field} if field else {}))


def upload_json(session: Session, row: Upload) -> dict:
    files, size = session.execute(select(func.count(), func.coalesce(func.sum(UploadFile.size_bytes), 0))
                                  .where(UploadFile.upload_id == row.id)).one()
    return {"id": row.id, "files": files, "bytes": int(size), "job": row.job_id,
            "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat(),
            "links": {"self": f"/api/v1/uploads/{row.id}", "files": f"/api/v1/uploads/{row.id}/files",
                      **({"job": f"/api/v1/jobs/{row.job_id}"} if row.job_id else {})}}


def get_upload(upload_id: str, who: Caller = ANYONE) -> dict:
    with session_scope() as session:
        return upload_json(session, find_upload(session, upload_id, who))


def stored_name(name: str, sha256: str) -> str:
    """Where a file of this name and these bytes is kept in its upload's folder (its suffix kept for people)."""
    suffix = _SUFFIX.search(name)
    return f"{hashlib.sha256(name.encode()).hexdigest()[:24]}-{sha256[:24]}{suffix.group(0).lower() if suffix else ''}"


def _store(settings: Settings, upload_id: str, files: Iterable[tuple[str, BinaryIO]]) -> list[dict]:
    """Each file written whole under its stored name (shared/services/upload_files.py); the rows to insert."""
    rows = []
    for name, stream in files:
        _, size, sha = upload_files.write(settings, upload_id, stream, partial(stored_name, name))
        rows.append({"name": name, "stored": stored_name(name, sha), "size_bytes": size, "sha256": sha})
    return rows


def add_files(settings: Settings, upload_id: str, files: list[tuple[str, BinaryIO]], who: Caller = ANYONE) -> dict:
    """Store a part's files (name, stream) in the upload. Returns {"added", "repeated", "upload"}."""
    for name, _ in files:
        if len(name) > MAX_NAME:
            raise InvalidRequest(f"a file name is {len(name)} characters; at most {MAX_NAME} (it becomes the item "
                                 "id)", field="files")
    with session_scope() as session:
        _unused(find_upload(session, upload_id, who), "take files")
    upload_files.make_folder(settings, upload_id)  # gone only if the sweeper took the upload meanwhile: a 404 below
    rows = []
    try:
        rows = _store(settings, upload_id, files)
        with session_scope() as session:
            row = find_upload(session, upload_id, who, lock=True)
            _unused(row, "take files")
            added = _insert(session, upload_id, rows)
            row.updated_at = utcnow()
            session.flush()
            return {"added": added, "repeated": len(rows) - added, "upload": upload_json(session, row)}
    except BaseException:
        _remove_unrecorded(settings, upload_id, rows)
        raise


def _insert(session: Session, upload_id: str, rows: list[dict]) -> int:
    """Insert the rows not there yet; Conflict if a name is there with other bytes. How many were inserted."""
    inserted = {r.name for r in insert_ignoring_conflicts(session, UploadFile.__table__,
                                                         [{"upload_id": upload_id, **r} for r in rows],
                                                         ["upload_id", "name"])}
    others = {r["name"]: r["sha256"] for r in rows if r["name"] not in inserted}
    if others:
        held = dict(session.execute(select(UploadFile.name, UploadFile.sha256).where(
            UploadFile.upload_id == upload_id, UploadFile.name.in_(list(others)))).all())
        differ = sorted(name for name, sha in others.items() if held.get(name) != sha)
        if differ:
            raise Conflict(f"the upload already holds other bytes under {len(differ)} of these names (e.g. "
                           f"{differ[0]!r}); a name is an item id, it names one file", field="files")
    return len(inserted)


def _remove_unrecorded(settings: Settings, upload_id: str, rows: list[dict]) -> None:
    """After a refused part: remove the files it wrote that no row of the upload names (with the database away,
    none: the sweeper removes the rest with the upload). A file cut off while written was removed by its writer."""
    try:
        with session_scope() as session:
            kept = set(session.scalars(select(UploadFile.stored).where(UploadFile.upload_id == upload_id)))
    except Exception:  # noqa: BLE001 - the part's own error is the one to report
        kept = {row["stored"] for row in rows}
    upload_files.remove(settings, [upload_files.file_uri(settings, upload_id, row["stored"]) for row in rows
                                   if row["stored"] not in kept])


def delete_upload(settings: Settings, upload_id: str, who: Caller = ANYONE) -> None:
    """Forget an unused upload and remove its folder (Conflict once a job took it: the folder is the job's)."""
    with session_scope() as session:
        row = find_upload(session, upload_id, who, lock=True)
        _unused(row, "be deleted")
        session.execute(delete(UploadFile).where(UploadFile.upload_id == upload_id))
        session.delete(row)
    upload_files.remove_folder(settings, upload_id)


def take(session: Session, settings: Settings, upload_id: str, who: Caller = ANYONE) -> list[tuple[str, str]]:
    """The (item id, path) of every file of the upload, by name, for a job the caller is creating in this
    transaction (the upload locked: no part is added meanwhile); `mark_taken` records the job. Unknown, another's,
    taken or empty: NotFound, Forbidden, Conflict, InvalidRequest, each naming the field `upload`."""
    row = find_upload(session, upload_id, who, lock=True, field="upload")
    _unused(row, "be used again", field="upload")
    items = [(name, upload_files.file_uri(settings, upload_id, stored)) for name, stored in session.execute(
        select(UploadFile.name, UploadFile.stored).where(UploadFile.upload_id == upload_id)
        .order_by(UploadFile.name)).all()]
    if not items:
        raise InvalidRequest(f"upload {upload_id} holds no files; add them with POST /api/v1/uploads/{upload_id}/files",
                             field="upload")
    return items


def mark_taken(session: Session, upload_id: str, job_id: str) -> None:
    session.get(Upload, upload_id).job_id = job_id


def content_of(upload_id: str) -> list[tuple[str, str]]:
    """(name, sha256) of each file, by name: what an Idempotency-Key's fingerprint of a request naming the upload
    holds (its content, not its id: the same folder sent again under the same key is the same request)."""
    with session_scope() as session:
        return [tuple(r) for r in session.execute(select(UploadFile.name, UploadFile.sha256)
                                                  .where(UploadFile.upload_id == upload_id)
                                                  .order_by(UploadFile.name)).all()]


def remove_idle(settings: Settings, idle_after: float) -> int:
    """Remove the uploads no job took and nobody added to for `idle_after` seconds, rows and folders. How many."""
    cut = utcnow() - timedelta(seconds=idle_after)
    with session_scope() as session:
        idle = list(session.scalars(select(Upload.id).where(Upload.job_id.is_(None), Upload.updated_at < cut)))
        _forget(session, idle)
    for upload_id in idle:
        upload_files.remove_folder(settings, upload_id)
    return len(idle)


def _forget(session: Session, upload_ids: list[str]) -> None:
    if upload_ids:
        session.execute(delete(UploadFile).where(UploadFile.upload_id.in_(upload_ids)))
        session.execute(delete(Upload).where(Upload.id.in_(upload_ids)))


def forget_taken(session: Session, folders: list[str]) -> None:
    """Forget the rows of taken uploads whose folders (their jobs') the retention removes."""
    _forget(session, list(session.scalars(select(Upload.id).where(Upload.id.in_(folders),
                                                                  Upload.job_id.is_not(None)))))


def open_upload_ids(session: Session, names: list[str]) -> set[str]:
    """Which of these folder names belong to an upload no job took yet (the sweeper leaves them to `remove_idle`)."""
    return set(session.scalars(select(Upload.id).where(Upload.id.in_(names), Upload.job_id.is_(None))))
