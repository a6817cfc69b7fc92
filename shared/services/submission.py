"""Submitting jobs: the one path from a request (HTTP, the CLI, a sweep, a schedule's slot) to jobs on the queue.

`submit` commits one job and describes it; `commit_and_send` commits any number (a sweep's, a slot's: maybe
none). The `submit_*` functions are the use cases built on them; callers only parse and stage files.

Invariants:
- A submission's rows are written in one transaction, by the `create(session)` callable the caller passes.
- Jobs are sent (`enqueue(job_ids)`) only after that transaction committed, never inside it. A job the broker
  did not take stays unsent in the database and the sweeper sends it later.
- Every submission has an `Origin`: the token that asks (recorded on every job it makes, a sweep's included), its
  cap on queued and running jobs (IMGQ_MAX_ACTIVE_JOBS, counted before anything is written: a sweep counts all its
  jobs; over it, TooManyRequests) and its Idempotency-Key. `submit` and `submit_sweep` stamp the origin on what the
  caller's `create` made, so no use case can forget it.
- One Idempotency-Key, one job (or one sweep): a repeated key returns what its first request created
  (created=False, and no cap is counted: nothing new is made), also when both requests run at once (the later
  write hits the key's unique constraint, and that request returns what the other committed). A key reused for a
  different request (another fingerprint, or a job's key for a sweep) is a 422.
- `discard()`, when given, runs exactly when the call committed nothing (an error, or a replay): the files the
  caller staged for a job that will never read them are removed.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.core import dispatch
from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.errors import InvalidRequest, Unprocessable
from shared.core.states import CHUNKED_JOB_KINDS, JobKind, JobStatus
from shared.core.tables import Job, Sweep
from shared.images import manifests
from shared.schemas.training import SweepRequest, TrainRequest
from shared.search.vector_index import BuildParams
from shared.services import index_jobs, job_exports, jobs, model_imports, preparation, train_jobs, uploads
from shared.services.embed_spec import embedding_spec
from shared.services.model_registry import Signature
from shared.services.quotas import check_active_jobs
from shared.services.tokens import Caller

Enqueue = Callable[[list[str]], int]
CHECKED_MANIFEST_ROWS = 100  # a large manifest's rows read in the request: its columns and the start of its data


def fingerprint(request: object) -> str:
    """What identifies a request under an Idempotency-Key: the hash of its canonical JSON."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def send(job_ids: list[str]) -> int:
    """Enqueue committed jobs by kind: every chunk of a score or embed job (or its manifest's preparation, while it
    is preparing), a train job's run, an import job. Returns how many messages the broker took."""
    with session_scope() as session:
        rows = session.execute(select(Job.id, Job.kind, Job.status, Job.total_chunks)
                               .where(Job.id.in_(job_ids))).all()
    preparing = [row.id for row in rows if row.status == JobStatus.PREPARING]
    sent = dispatch.enqueue_preparation(preparing) if preparing else 0
    sent += sum(dispatch.enqueue_chunks(row.id, list(range(row.total_chunks)))
                for row in rows if row.kind in CHUNKED_JOB_KINDS and row.status != JobStatus.PREPARING)
    for kind, enqueue in ((JobKind.TRAIN, dispatch.enqueue_train), (JobKind.IMPORT, dispatch.enqueue_imports),
                          (JobKind.INDEX, dispatch.enqueue_index)):
        ids = [row.id for row in rows if row.kind == kind]
        sent += enqueue(ids) if ids else 0
    return sent


def commit_and_send(create: Callable[[Session], Iterable[Job]], enqueue: Enqueue = send) -> tuple[list[str], int]:
    """Commit the jobs `create(session)` inserts, then send them. Returns (their ids, messages sent)."""
    with session_scope() as session:
        job_ids = [job.id for job in create(session)]
    return job_ids, enqueue(job_ids) if job_ids else 0


@dataclass(frozen=True)
class Origin:
    """Who submits: the token (None: auth off, or the CLI), its cap on active jobs (None: no cap), and the request's
    Idempotency-Key (None: every request makes a new job)."""
    token_id: int | None = None
    max_active_jobs: int | None = None
    idempotency_key: str | None = None


ANONYMOUS = Origin()


def submit(create: Callable[[Session], Job], *, origin: Origin = ANONYMOUS, request_fingerprint: str | None = None,
           enqueue: Enqueue = send, discard: Callable[[], None] | None = None) -> tuple[dict, bool]:
    """Commit the job `create(session)` inserts (stamped with the origin and fingerprint), send it, and describe
    it. Returns (description, created); created is False for the job an earlier request with this key made."""
    def create_job(session: Session) -> str:
        check_active_jobs(session, origin.token_id, origin.max_active_jobs)
        return _stamped(session, create(session), origin, request_fingerprint).id

    try:
        job_id, created = _commit_once(create_job, Job, origin.idempotency_key, request_fingerprint)
    except BaseException:
        if discard is not None:
            discard()
        raise
    if created:
        enqueue([job_id])
    elif discard is not None:
        discard()
    with session_scope() as session:
        return jobs.job_json(session, session.get(Job, job_id)), created


def _stamped(session: Session, row: Job | Sweep, origin: Origin, request_fingerprint: str | None) -> Job | Sweep:
    row.token_id, row.idempotency_key = origin.token_id, origin.idempotency_key
    row.request_fingerprint = request_fingerprint if origin.idempotency_key else None
    session.flush()  # a key another request holds fails here, inside the retry of _commit_once
    return row


def _earlier(session: Session, table: type[Job] | type[Sweep], key: str | None,
             request_fingerprint: str | None) -> str | None:
    """The id of the job (or sweep: `table`) an earlier request with this Idempotency-Key created; Unprocessable if
    that request differed, or made a sweep where this one makes a job (or the other way round)."""
    if not key:
        return None
    for kind in (Job, Sweep):
        row = session.execute(select(kind.id, kind.request_fingerprint).where(kind.idempotency_key == key)).first()
        if row is None:
            continue
        if kind is not table or row.request_fingerprint != request_fingerprint:
            raise Unprocessable("this Idempotency-Key was already used for a different request",
                                field="Idempotency-Key")
        return row.id
    return None


def _commit_once(create: Callable[[Session], str], table: type[Job] | type[Sweep], key: str | None,
                 request_fingerprint: str | None) -> tuple[str, bool]:
    """(id, True) for what `create` committed, or (id, False) for what an earlier request with `key` made."""
    try:
        with session_scope() as session:
            earlier = _earlier(session, table, key, request_fingerprint)
            if earlier is not None:
                return earlier, False
            return create(session), True
    except IntegrityError:
        if not key:
            raise
        with session_scope() as session:  # a concurrent request with the same key committed first
            earlier = _earlier(session, table, key, request_fingerprint)
        if earlier is None:
            raise
        return earlier, False


def submit_score(settings: Settings, *, model_ref: str, pieces: Iterable[list[tuple[str, str]]], source: dict,
                 use_cache: bool, origin: Origin = ANONYMOUS, request_fingerprint: str | None = None,
                 discard: Callable[[], None] | None = None, export: str | None = None) -> tuple[dict, bool]:
    """A score job over `pieces` (lists of (item id, image uri)), split into chunks of IMGQ_CHUNK_SIZE items;
    `export`: where its results go when it succeeds (shared/services/job_exports.py)."""
    def create(session: Session) -> Job:
        return jobs.create_score_job(session, model_ref=model_ref, pieces=pieces, source=source,
                                     use_cache=use_cache, chunk_size=settings.chunk_size)

    return submit(_with_export(settings, export, create), origin=origin, request_fingerprint=request_fingerprint,
                  discard=discard)


def submit_embed(settings: Settings, *, model_ref: str, catalog: str, layer: str | None, normalize: bool,
                 pieces: Iterable[list[tuple[str, str, str | None]]], source: dict, use_cache: bool,
                 origin: Origin = ANONYMOUS, request_fingerprint: str | None = None,
                 discard: Callable[[], None] | None = None, export: str | None = None) -> tuple[dict, bool]:
    """An embed job over `pieces` (lists of (item id, image uri, category)) into `catalog`, chunked as scoring;
    its space (the version, layer and normalisation) is decided here, at submission (shared/services/embed_spec.py)."""
    def create(session: Session) -> Job:
        return jobs.create_item_job(session, JobKind.EMBED, model_ref=model_ref, pieces=pieces, source=source,
                                    use_cache=use_cache, chunk_size=settings.chunk_size,
                                    spec_for=partial(embedding_spec, catalog=catalog, layer=layer, normalize=normalize,
                                                     settings=settings))

    return submit(_with_export(settings, export, create), origin=origin, request_fingerprint=request_fingerprint,
                  discard=discard)


def _with_export(settings: Settings, export: str | None, create: Callable[[Session], Job]) -> Callable[[Session], Job]:
    """`create`, adding the job's results export (its URI with the job's id) in the same transaction."""
    if export is None:
        return create

    def create_exporting(session: Session) -> Job:
        job = create(session)
        job_exports.add_export(session, job.id, job_exports.export_uri(settings, export, job.id))
        return job

    return create_exporting


def submit_score_manifest(settings: Settings, *, model_ref: str, source: dict, use_cache: bool,
                          origin: Origin = ANONYMOUS, request_fingerprint: str | None = None,
                          export: str | None = None) -> tuple[dict, bool]:
    """A score job over the manifest `source` names: read into items here when it is small, else committed
    preparing for the maintenance worker to read (`_manifest_job`)."""
    def inline(pieces) -> tuple[dict, bool]:
        return submit_score(settings, model_ref=model_ref, pieces=pieces, source=source, use_cache=use_cache,
                            origin=origin, request_fingerprint=request_fingerprint, export=export)

    create = _with_export(settings, export, partial(preparation.create_preparing_job, kind=JobKind.SCORE,
                                                    model_ref=model_ref, source=source, use_cache=use_cache))
    return _manifest_job(settings, source, inline, create, origin, request_fingerprint)


def submit_embed_manifest(settings: Settings, *, model_ref: str, catalog: str, layer: str | None, normalize: bool,
                          source: dict, use_cache: bool, origin: Origin = ANONYMOUS,
                          request_fingerprint: str | None = None, export: str | None = None) -> tuple[dict, bool]:
    """An embed job over the manifest `source` names, read here or by the maintenance worker as a score job's."""
    spec_for = partial(embedding_spec, catalog=catalog, layer=layer, normalize=normalize,
                                                     settings=settings)

    def inline(pieces) -> tuple[dict, bool]:
        return submit_embed(settings, model_ref=model_ref, catalog=catalog, layer=layer, normalize=normalize,
                            pieces=pieces, source=source, use_cache=use_cache, origin=origin,
                            request_fingerprint=request_fingerprint, export=export)

    create = _with_export(settings, export, partial(preparation.create_preparing_job, kind=JobKind.EMBED,
                                                    model_ref=model_ref, source=source, use_cache=use_cache,
                                                    spec_for=spec_for))
    return _manifest_job(settings, source, inline, create, origin, request_fingerprint)


def _manifest_job(settings: Settings, source: dict, inline: Callable[[Iterable], tuple[dict, bool]],
                  create: Callable[[Session], Job], origin: Origin,
                  request_fingerprint: str | None) -> tuple[dict, bool]:
    """A manifest up to IMGQ_INLINE_MANIFEST_BYTES (by its size: cheaper than counting rows) is read into items in
    the request, as it always was. A larger one is only checked here (it exists inside the data roots, its header
    has the columns, its first CHECKED_MANIFEST_ROWS rows read: a 400 with nothing stored otherwise) and its job
    committed preparing, so the answer comes at once whatever its size; the maintenance worker reads it all
    (preparation.py)."""
    if manifests.size_of(manifests.locate(settings, source["manifest"])) <= settings.inline_manifest_bytes:
        return inline(manifests.source_pieces(settings, source))
    pieces = manifests.source_pieces(settings, source, rows=CHECKED_MANIFEST_ROWS)
    try:
        if not next(pieces, None):
            raise InvalidRequest("the job has no items", field="items")
    finally:
        pieces.close()
    return submit(create, origin=origin, request_fingerprint=request_fingerprint)


def _from_upload(settings: Settings, upload_id: str, who: Caller, make: Callable[[Session, list], Job]):
    """A `create` for `submit` that takes an upload's files as the job's items, in the job's transaction."""
    def create(session: Session) -> Job:
        items = uploads.take(session, settings, upload_id, who)
        job = make(session, items)
        uploads.mark_taken(session, upload_id, job.id)
        return job

    return create


def _upload_source(upload_id: str, items: list) -> dict:
    return {"type": "upload", "count": len(items), "folder": upload_id, "upload": upload_id}


def submit_score_upload(settings: Settings, *, model_ref: str, upload_id: str, use_cache: bool, who: Caller,
                        origin: Origin = ANONYMOUS, export: str | None = None) -> tuple[dict, bool]:
    """A score job over the files of an upload sent in parts (shared/services/uploads.py), its ids their names; the
    fingerprint holds the files' names and hashes, so the same folder uploaded again under the same key replays."""
    fp = fingerprint({"model": model_ref, "cache": use_cache, "export": export, "files": uploads.content_of(upload_id)})

    def make(session: Session, items: list) -> Job:
        return jobs.create_score_job(session, model_ref=model_ref, pieces=[items], use_cache=use_cache,
                                     source=_upload_source(upload_id, items), chunk_size=settings.chunk_size)

    return submit(_with_export(settings, export, _from_upload(settings, upload_id, who, make)), origin=origin,
                  request_fingerprint=fp)


def submit_embed_upload(settings: Settings, *, model_ref: str, upload_id: str, catalog: str, layer: str | None,
                        normalize: bool, category: str | None, use_cache: bool, who: Caller,
                        origin: Origin = ANONYMOUS, export: str | None = None) -> tuple[dict, bool]:
    """An embed job over the files of an upload sent in parts, all in `category`."""
    fp = fingerprint({"kind": "embed", "model": model_ref, "catalog": catalog, "layer": layer, "normalize": normalize,
                      "category": category, "cache": use_cache, "export": export,
                      "files": uploads.content_of(upload_id)})

    def make(session: Session, items: list) -> Job:
        return jobs.create_item_job(session, JobKind.EMBED, model_ref=model_ref,
                                    pieces=[[(*item, category) for item in items]],
                                    source=_upload_source(upload_id, items), use_cache=use_cache,
                                    chunk_size=settings.chunk_size,
                                    spec_for=partial(embedding_spec, catalog=catalog, layer=layer, normalize=normalize,
                                                     settings=settings))

    return submit(_with_export(settings, export, _from_upload(settings, upload_id, who, make)), origin=origin,
                  request_fingerprint=fp)


def submit_train(req: TrainRequest, *, origin: Origin = ANONYMOUS,
                 request_fingerprint: str | None = None) -> tuple[dict, bool]:
    """A train job (the training runs in a fresh process on the train queue)."""
    return submit(partial(train_jobs.create_train_job, req=req), origin=origin,
                  request_fingerprint=request_fingerprint)


def submit_import(job_id: str, *, name: str, signature: Signature, shown: str, description: str | None,
                  promote: bool | None, origin: Origin = ANONYMOUS, request_fingerprint: str | None = None,
                  discard: Callable[[], None] | None = None) -> tuple[dict, bool]:
    """An import job for the model file staged at model_imports.staging_path(store, job_id); the maintenance
    worker inspects and registers it."""
    def create(session: Session) -> Job:
        return model_imports.create_import_job(session, job_id, name=name, signature=signature, shown=shown,
                                               description=description, promote=promote, token_id=origin.token_id)

    return submit(create, origin=origin, request_fingerprint=request_fingerprint, discard=discard)


def submit_sweep(sweep: SweepRequest, *, origin: Origin = ANONYMOUS, request_fingerprint: str | None = None,
                 enqueue: Enqueue = send) -> tuple[dict, bool]:
    """One train job per point of the sweep's grid over its base request (each validated by the request model before
    anything is written), all sent once the sweep is committed; the cap counts every one of them. Returns (the sweep's
    description, created)."""
    points = len(sweep.train_requests())
    job_ids: list[str] = []

    def create(session: Session) -> str:
        check_active_jobs(session, origin.token_id, origin.max_active_jobs, adding=points)
        sweep_id = str(uuid.uuid4())
        job_ids.extend(job.id for job in train_jobs.create_sweep(session, sweep_id, sweep, token_id=origin.token_id))
        return _stamped(session, session.get(Sweep, sweep_id), origin, request_fingerprint).id

    sweep_id, created = _commit_once(create, Sweep, origin.idempotency_key, request_fingerprint)
    if created:
        enqueue(job_ids)
    with session_scope() as session:
        return train_jobs.sweep_json(session, sweep_id), created


def submit_index(*, catalog: str, space: str | None, mode: str, params: BuildParams | None,
                 origin: Origin = ANONYMOUS, request_fingerprint: str | None = None) -> tuple[dict, bool]:
    """An index job: build the catalog's index in an embedding space, or extend the latest one with the items
    embedded since (a delta); the maintenance worker runs it."""
    def create(session: Session) -> Job:
        return index_jobs.create_index_job(session, catalog=catalog, space=space, mode=mode, params=params)

    return submit(create, origin=origin, request_fingerprint=request_fingerprint)
