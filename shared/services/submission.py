"""Submitting jobs: the one path from a request (HTTP, the CLI, a sweep, a schedule's slot) to jobs on the queue.

`submit` commits one job and describes it; `commit_and_send` commits any number (a sweep's, a slot's: maybe
none). The `submit_*` functions are the use cases built on them; callers only parse and stage files.

Invariants:
- A submission's rows are written in one transaction, by the `create(session)` callable the caller passes.
- Jobs are sent (`enqueue(job_ids)`) only after that transaction committed, never inside it. A job the broker
  did not take stays unsent in the database and the sweeper sends it later.
- One Idempotency-Key, one job: a repeated key returns the job its first request created (created=False), also
  when both requests run at once (the later insert hits the key's unique constraint, and that request returns
  the job the other committed). A key reused for a different request (another fingerprint) is a 422.
- `discard()`, when given, runs exactly when the call committed nothing (an error, or a replay): the files the
  caller staged for a job that will never read them are removed.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable
from functools import partial

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.core import dispatch
from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.states import CHUNKED_JOB_KINDS, JobKind
from shared.core.tables import Job
from shared.schemas.training import SweepRequest, TrainRequest
from shared.search.vector_index import BuildParams
from shared.services import index_jobs, jobs, model_imports, train_jobs
from shared.services.embed_spec import embedding_spec
from shared.services.model_registry import Signature

Enqueue = Callable[[list[str]], int]


def fingerprint(request: object) -> str:
    """What identifies a request under an Idempotency-Key: the hash of its canonical JSON."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def send(job_ids: list[str]) -> int:
    """Enqueue committed jobs by kind: every chunk of a score or embed job, a train job's run, an import job.
    Returns how many messages the broker took."""
    with session_scope() as session:
        rows = session.execute(select(Job.id, Job.kind, Job.total_chunks).where(Job.id.in_(job_ids))).all()
    sent = sum(dispatch.enqueue_chunks(row.id, list(range(row.total_chunks)))
               for row in rows if row.kind in CHUNKED_JOB_KINDS)
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


def submit(create: Callable[[Session], Job], *, idempotency_key: str | None = None,
           request_fingerprint: str | None = None, enqueue: Enqueue = send,
           discard: Callable[[], None] | None = None) -> tuple[dict, bool]:
    """Commit the job `create(session)` inserts (with this key and fingerprint), send it, and describe it.
    Returns (description, created); created is False for the job an earlier request with this key made."""
    try:
        job_id, created = _commit_once(create, idempotency_key, request_fingerprint)
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


def _earlier(session: Session, key: str | None, request_fingerprint: str | None) -> Job | None:
    """The job an earlier request with this Idempotency-Key created (Unprocessable if that request differed)."""
    return jobs.find_by_idempotency_key(session, key, request_fingerprint) if key else None


def _commit_once(create: Callable[[Session], Job], key: str | None,
                 request_fingerprint: str | None) -> tuple[str, bool]:
    """(id, True) for the job `create` committed, or (id, False) for the one an earlier request with `key` made."""
    try:
        with session_scope() as session:
            earlier = _earlier(session, key, request_fingerprint)
            if earlier is not None:
                return earlier.id, False
            return create(session).id, True
    except IntegrityError:
        if not key:
            raise
        with session_scope() as session:  # a concurrent request with the same key committed first
            earlier = _earlier(session, key, request_fingerprint)
        if earlier is None:
            raise
        return earlier.id, False


def submit_score(settings: Settings, *, model_ref: str, pieces: Iterable[list[tuple[str, str]]], source: dict,
                 use_cache: bool, idempotency_key: str | None = None, request_fingerprint: str | None = None,
                 token_id: int | None = None, discard: Callable[[], None] | None = None) -> tuple[dict, bool]:
    """A score job over `pieces` (lists of (item id, image uri)), split into chunks of IMGQ_CHUNK_SIZE items."""
    def create(session: Session) -> Job:
        return jobs.create_score_job(session, model_ref=model_ref, pieces=pieces, source=source,
                                     use_cache=use_cache, chunk_size=settings.chunk_size,
                                     idempotency_key=idempotency_key, fingerprint=request_fingerprint,
                                     token_id=token_id, max_active_jobs=settings.max_active_jobs)

    return submit(create, idempotency_key=idempotency_key, request_fingerprint=request_fingerprint,
                  discard=discard)


def submit_embed(settings: Settings, *, model_ref: str, catalog: str, layer: str | None, normalize: bool,
                 pieces: Iterable[list[tuple[str, str, str | None]]], source: dict, use_cache: bool,
                 idempotency_key: str | None = None, request_fingerprint: str | None = None,
                 token_id: int | None = None, discard: Callable[[], None] | None = None) -> tuple[dict, bool]:
    """An embed job over `pieces` (lists of (item id, image uri, category)) into `catalog`, chunked as scoring;
    its space (the version, layer and normalisation) is decided here, at submission (shared/services/embed_spec.py)."""
    def create(session: Session) -> Job:
        return jobs.create_item_job(session, JobKind.EMBED, model_ref=model_ref, pieces=pieces, source=source,
                                    use_cache=use_cache, chunk_size=settings.chunk_size,
                                    spec_for=partial(embedding_spec, catalog=catalog, layer=layer, normalize=normalize),
                                    idempotency_key=idempotency_key, fingerprint=request_fingerprint,
                                    token_id=token_id, max_active_jobs=settings.max_active_jobs)

    return submit(create, idempotency_key=idempotency_key, request_fingerprint=request_fingerprint,
                  discard=discard)


def submit_train(req: TrainRequest, *, idempotency_key: str | None = None, request_fingerprint: str | None = None,
                 token_id: int | None = None, max_active_jobs: int | None = None) -> tuple[dict, bool]:
    """A train job (the training runs in a fresh process on the train queue)."""
    def create(session: Session) -> Job:
        return train_jobs.create_train_job(session, req, idempotency_key=idempotency_key,
                                           fingerprint=request_fingerprint, token_id=token_id,
                                           max_active_jobs=max_active_jobs)

    return submit(create, idempotency_key=idempotency_key, request_fingerprint=request_fingerprint)


def submit_import(job_id: str, *, name: str, signature: Signature, shown: str, description: str | None,
                  promote: bool | None, token_id: int | None = None,
                  discard: Callable[[], None] | None = None) -> dict:
    """An import job for the model file staged at model_imports.staging_path(store, job_id); the maintenance
    worker inspects and registers it. Returns the job's description."""
    def create(session: Session) -> Job:
        return model_imports.create_import_job(session, job_id, name=name, signature=signature, shown=shown,
                                               description=description, promote=promote, token_id=token_id)

    return submit(create, discard=discard)[0]


def submit_sweep(sweep: SweepRequest) -> dict:
    """One train job per point of the sweep's grid over its base request, all sent once the sweep is committed.
    Returns the sweep's description."""
    sweep_id = str(uuid.uuid4())
    commit_and_send(lambda session: train_jobs.create_sweep(session, sweep_id, sweep))
    with session_scope() as session:
        return train_jobs.sweep_json(session, sweep_id)


def submit_index(*, catalog: str, space: str | None, mode: str, params: BuildParams | None, token_id: int | None = None
                 ) -> tuple[dict, bool]:
    """An index job: build the catalog's index in an embedding space, or extend the latest one with the items
    embedded since (a delta); the maintenance worker runs it."""
    def create(session: Session) -> Job:
        return index_jobs.create_index_job(session, catalog=catalog, space=space, mode=mode, params=params,
                                               token_id=token_id)

    return submit(create)
