"""The HTTP side of submitting a job: a score or embed request's items (JSON items, a manifest, an upload sent in
parts, or uploaded files) and a model upload, turned into a call to shared/services/submission.py (which commits,
enqueues and describes).

Uploaded files are streamed to disk before the job is committed (workers read them there); when the submission
commits nothing (an error, or a repeated Idempotency-Key), they are removed again.
"""
from __future__ import annotations

import hashlib
import uuid
from functools import partial
from pathlib import Path

from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from shared.core.config import Settings
from shared.core.errors import InvalidRequest
from shared.schemas.jobs import EmbedRequest, EmbedUploadForm, ScoreRequest, ScoreUploadForm
from shared.services import job_exports, model_imports, submission, upload_files
from shared.services.model_registry import Signature
from shared.services.submission import Origin
from web.auth import caller

DEFAULT_CATEGORY_COLUMN = "category"


def submit_json(settings: Settings, req: ScoreRequest, origin: Origin) -> tuple[dict, bool]:
    _check_export(settings, req.export)
    if req.upload is not None:
        return submission.submit_score_upload(settings, model_ref=req.model, upload_id=req.upload,
                                              use_cache=req.cache, who=caller(), origin=origin, export=req.export)
    fp = submission.fingerprint(req.model_dump())
    if req.items is None:
        source = {"type": "manifest", "manifest": req.manifest, "id_column": req.id_column,
                  "image_column": req.image_column}
        return submission.submit_score_manifest(settings, model_ref=req.model, source=source, use_cache=req.cache,
                                                origin=origin, request_fingerprint=fp, export=req.export)
    return submission.submit_score(settings, model_ref=req.model, pieces=[[(it.id, it.uri) for it in req.items]],
                                   source={"type": "items", "count": len(req.items)}, use_cache=req.cache,
                                   origin=origin, request_fingerprint=fp, export=req.export)


def submit_embed_json(settings: Settings, req: EmbedRequest, origin: Origin) -> tuple[dict, bool]:
    """An embed job from JSON items or a manifest; a manifest's categories come from `category_column` (default
    "category", and then only if the manifest has it); an upload's files all get `category`."""
    _check_export(settings, req.export)
    if req.upload is not None:
        return submission.submit_embed_upload(settings, model_ref=req.model, upload_id=req.upload,
                                              catalog=req.catalog, layer=req.layer, normalize=req.normalize,
                                              category=req.category, use_cache=req.cache, who=caller(), origin=origin,
                                              export=req.export)
    fp = submission.fingerprint({"kind": "embed", **req.model_dump()})
    space = {"catalog": req.catalog, "layer": req.layer, "normalize": req.normalize}
    if req.items is None:
        source = {"type": "manifest", "manifest": req.manifest, "id_column": req.id_column,
                  "image_column": req.image_column, "category_column": req.category_column or DEFAULT_CATEGORY_COLUMN,
                  "category_required": req.category_column is not None}
        return submission.submit_embed_manifest(settings, model_ref=req.model, **space, source=source,
                                                use_cache=req.cache, origin=origin, request_fingerprint=fp,
                                                export=req.export)
    return submission.submit_embed(settings, model_ref=req.model, **space,
                                   pieces=[[(it.id, it.uri, it.category) for it in req.items]],
                                   source={"type": "items", "count": len(req.items)}, use_cache=req.cache,
                                   origin=origin, request_fingerprint=fp, export=req.export)


def _check_export(settings: Settings, export: str | None) -> None:
    """A 400 on `export` before a manifest is read or anything is stored, when the export may not go there."""
    if export is not None:
        job_exports.export_uri(settings, export)


def _save_upload(storage: FileStorage, dest: Path) -> str:
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for block in iter(lambda: storage.stream.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def upload_names(files: list[FileStorage]) -> list[str]:
    """The files' names (their item ids), checked: present, without NUL bytes, unique in the request."""
    if not files:
        raise InvalidRequest("no files in the upload; send them as multipart parts named 'files'", field="files")
    names = [f.filename or "" for f in files]
    if any(not n for n in names):
        raise InvalidRequest("every uploaded file needs a file name (it becomes the item id)", field="files")
    if any("\x00" in n for n in names):
        raise InvalidRequest("an uploaded file name holds a NUL byte", field="files")
    if len(set(names)) != len(names):
        raise InvalidRequest("uploaded file names must be unique (they are the item ids)", field="files")
    return names


def _stage_upload(settings: Settings, files: list[FileStorage]):
    """Stream the files to a new upload folder (local, or a prefix of the object store: shared/services/upload_files).
    Returns ([(item id, uri)], their hashes, the folder's name, and the callable that removes it)."""
    names = upload_names(files)
    folder = uuid.uuid4().hex
    upload_files.make_folder(settings, folder)
    discard = partial(upload_files.remove_folder, settings, folder)
    try:
        items, hashes = [], []
        for i, (name, storage) in enumerate(zip(names, files)):
            stored = f"{i:06d}-{secure_filename(name) or 'file'}"
            uri, _, sha = upload_files.write(settings, folder, storage.stream, lambda _sha, s=stored: s)
            hashes.append(sha)
            items.append((name, uri))
    except BaseException:
        discard()
        raise
    return items, hashes, folder, discard


def submit_upload(settings: Settings, files: list[FileStorage], form: ScoreUploadForm,
                  origin: Origin) -> tuple[dict, bool]:
    """Multipart: each file is one item, its id the file name. Files are streamed to the
    upload folder (which workers read), never held whole in memory."""
    items, hashes, folder, discard = _stage_upload(settings, files)
    fp = submission.fingerprint({"model": form.model, "cache": form.cache,
                                 "files": list(zip([i for i, _ in items], hashes))})
    return submission.submit_score(settings, model_ref=form.model, pieces=[items], use_cache=form.cache,
                                   source={"type": "upload", "count": len(items), "folder": folder},
                                   origin=origin, request_fingerprint=fp, discard=discard)


def submit_embed_upload(settings: Settings, files: list[FileStorage], form: EmbedUploadForm,
                        origin: Origin) -> tuple[dict, bool]:
    """Multipart embed: each file is one item, its id the file name, all in the form's category."""
    items, hashes, folder, discard = _stage_upload(settings, files)
    fp = submission.fingerprint({"kind": "embed", **form.model_dump(),
                                 "files": list(zip([i for i, _ in items], hashes))})
    return submission.submit_embed(settings, model_ref=form.model, catalog=form.catalog, layer=form.layer,
                                   normalize=form.normalize, pieces=[[(*item, form.category) for item in items]],
                                   source={"type": "upload", "count": len(items), "folder": folder},
                                   use_cache=form.cache, origin=origin, request_fingerprint=fp, discard=discard)


def submit_import(settings: Settings, upload: FileStorage, *, name: str, signature: Signature, shown: str,
                  description: str | None, promote: bool | None, origin: Origin) -> tuple[dict, bool]:
    """Stream the model file to its staging place in the model store, then submit an import job for it (the
    maintenance worker inspects and registers it). Returns (the job's description, created); the request's
    fingerprint is the form and the file's hash, so the same upload under the same Idempotency-Key is a replay."""
    job_id = model_imports.new_job_id()
    signature.validated()  # a bad signature is a 400 before anything is written
    staged = model_imports.staging_path(settings.model_store, job_id)
    staged.parent.mkdir(parents=True, exist_ok=True)
    discard = partial(staged.unlink, missing_ok=True)
    try:
        digest = _save_upload(upload, staged)
    except BaseException:
        discard()
        raise
    fp = submission.fingerprint({"kind": "import", "name": name, "signature": signature.as_columns(), "file": digest,
                                 "shown": shown, "description": description, "promote": promote})
    return submission.submit_import(job_id, name=name, signature=signature, shown=shown, description=description,
                                    promote=promote, origin=origin, request_fingerprint=fp, discard=discard)
