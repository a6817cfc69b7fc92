"""Turning a score request (JSON items, a manifest, or uploaded files), a train request or a model upload into a
committed job.

The job (and its items and chunks, or its staged model file) is committed first; only then is it enqueued
(the outbox pattern: if enqueueing fails, the sweeper sends it later).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from shared import jobs, model_imports
from shared.config import Settings
from shared.db import session_scope
from shared.dispatch import enqueue_chunks, enqueue_imports, enqueue_train
from shared.errors import InvalidRequest
from shared.manifests import iter_manifest
from shared.model_registry import Signature
from shared.paths import OutsideDataRoots, path_inside, resolve_inside
from shared.tables import Job
from shared.train_jobs import create_train_job
from shared.train_spec import TrainRequest
from web.schemas import ScoreRequest


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _replay(idempotency_key: str | None, request_fingerprint: str) -> dict | None:
    """The job an earlier request with this Idempotency-Key created (422 if that request differed)."""
    if not idempotency_key:
        return None
    with session_scope() as s:
        existing = jobs.find_by_idempotency_key(s, idempotency_key, request_fingerprint)
        return jobs.describe(s, existing) if existing is not None else None


def submit(settings: Settings, *, model_ref: str, pieces, source: dict, use_cache: bool,
           idempotency_key: str | None, request_fingerprint: str, token_id: int | None = None) -> tuple[dict, bool]:
    """Create (or, for a repeated Idempotency-Key, find) the job. Returns (description, created)."""
    replay = _replay(idempotency_key, request_fingerprint)
    if replay is not None:
        return replay, False
    try:
        with session_scope() as s:
            job = jobs.create_score_job(s, model_ref=model_ref, pieces=pieces, source=source,
                                        use_cache=use_cache, chunk_size=settings.chunk_size,
                                        idempotency_key=idempotency_key, fingerprint=request_fingerprint,
                                        token_id=token_id, max_active_jobs=settings.max_active_jobs)
            job_id, n_chunks = job.id, job.total_chunks
    except IntegrityError:
        if not idempotency_key:
            raise
        with session_scope() as s:  # a concurrent request with the same key won the race
            existing = jobs.find_by_idempotency_key(s, idempotency_key, request_fingerprint)
            if existing is None:
                raise
            return jobs.describe(s, existing), False
    enqueue_chunks(job_id, list(range(n_chunks)))
    with session_scope() as s:
        return jobs.describe(s, s.get(Job, job_id)), True


def submit_json(settings: Settings, req: ScoreRequest, idempotency_key: str | None,
                token_id: int | None = None) -> tuple[dict, bool]:
    if req.items is not None:
        pieces = [[(it.id, it.uri) for it in req.items]]
        source = {"type": "items", "count": len(req.items)}
    else:
        try:
            manifest = resolve_inside(settings.data_roots, req.manifest)
        except OutsideDataRoots as exc:
            raise InvalidRequest(f"manifest: {exc}", field="manifest") from None
        pieces = iter_manifest(manifest, req.id_column, req.image_column)
        source = {"type": "manifest", "manifest": req.manifest, "id_column": req.id_column,
                  "image_column": req.image_column}
    return submit(settings, model_ref=req.model, pieces=pieces, source=source, use_cache=req.cache,
                  idempotency_key=idempotency_key, request_fingerprint=fingerprint(req.model_dump()),
                  token_id=token_id)


def _save_upload(storage: FileStorage, dest: Path) -> str:
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for block in iter(lambda: storage.stream.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def submit_upload(settings: Settings, files: list[FileStorage], form: dict,
                  idempotency_key: str | None, token_id: int | None = None) -> tuple[dict, bool]:
    """Multipart: each file is one item, its id the file name. Files are streamed to the
    upload folder (which workers read), never held whole in memory."""
    model_ref = (form.get("model") or "").strip()
    if not model_ref:
        raise InvalidRequest("form field 'model' is required", field="model")
    if not files:
        raise InvalidRequest("no files in the upload; send them as multipart parts named 'files'", field="files")
    use_cache = str(form.get("cache", "true")).lower() not in ("0", "false", "no")
    names = [f.filename or "" for f in files]
    if any(not n for n in names):
        raise InvalidRequest("every uploaded file needs a file name (it becomes the item id)", field="files")
    if any("\x00" in n for n in names):
        raise InvalidRequest("an uploaded file name holds a NUL byte", field="files")
    if len(set(names)) != len(names):
        raise InvalidRequest("uploaded file names must be unique (they are the item ids)", field="files")
    folder = path_inside(settings.upload_dir, uuid.uuid4().hex)
    folder.mkdir(parents=True)
    try:
        items, hashes = [], []
        for i, (name, storage) in enumerate(zip(names, files)):
            path = path_inside(folder, f"{i:06d}-{secure_filename(name) or 'file'}")
            hashes.append(_save_upload(storage, path))
            items.append((name, str(path)))
        fp = fingerprint({"model": model_ref, "cache": use_cache, "files": list(zip(names, hashes))})
        description, created = submit(settings, model_ref=model_ref, pieces=[items], use_cache=use_cache,
                                      source={"type": "upload", "count": len(items), "folder": folder.name},
                                      idempotency_key=idempotency_key, request_fingerprint=fp, token_id=token_id)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not created:
        shutil.rmtree(folder, ignore_errors=True)
    return description, created


def submit_train(req: TrainRequest, idempotency_key: str | None, request_fingerprint: str,
                 token_id: int | None = None, max_active_jobs: int | None = None) -> tuple[dict, bool]:
    """Commit the train job, then send it (outbox, as for score jobs)."""
    replay = _replay(idempotency_key, request_fingerprint)
    if replay is not None:
        return replay, False
    with session_scope() as s:
        job_id = create_train_job(s, req, idempotency_key=idempotency_key, fingerprint=request_fingerprint,
                                  token_id=token_id, max_active_jobs=max_active_jobs).id
    enqueue_train([job_id])
    with session_scope() as s:
        return jobs.describe(s, s.get(Job, job_id)), True


def submit_import(settings: Settings, upload: FileStorage, *, name: str, signature: Signature, shown: str,
                  description: str | None, promote: bool | None, token_id: int | None = None) -> dict:
    """Stream the model file to its staging place in the model store, commit an import job, then send it to the
    maintenance worker (which inspects and registers it). Returns the job's description."""
    job_id = model_imports.new_job_id()
    signature.validated()  # a bad signature is a 400 before anything is written
    staged = model_imports.staging_path(settings.model_store, job_id)
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        _save_upload(upload, staged)
        with session_scope() as s:
            model_imports.create_import_job(s, job_id, name=name, signature=signature, shown=shown,
                                            description=description, promote=promote, token_id=token_id)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    enqueue_imports([job_id])
    with session_scope() as s:
        return jobs.describe(s, s.get(Job, job_id))
