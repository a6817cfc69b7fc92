"""Jobs as the web front sees them: create score and embed jobs (outbox first), cancel, describe, list, results.

`lock_job` is the first step of every state change of a job and its chunks or run (here, in the lifecycle modules
worker/chunk_lifecycle.py and worker/training/lifecycle.py, and in the sweeper): the job row is locked before a
chunk or run row, everywhere, so two transitions never wait on each other in opposite orders."""
from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.core import keyset
from shared.core.db import get_or_404, is_postgres
from shared.core.errors import Forbidden, InvalidRequest, NotFound, Unprocessable
from shared.core.keyset import Key
from shared.core.states import FINAL_JOB_STATUSES, OPEN_JOB_STATUSES, ChunkState, JobKind, JobStatus, RunState
from shared.core.tables import Chunk, Job, JobItem, ModelVersion, Result, ResultExport, TrainRun, utcnow
from shared.core.vocab import EMBEDDING_TASK
from shared.models.outputs import output_columns
from shared.services import drift, index_jobs, model_imports, model_registry
from shared.services.embed_spec import embedding_json
from shared.services.tokens import ANYONE, Caller
from shared.services.train_jobs import train_json

MAX_ID_LENGTH = 500
MAX_CATEGORY_LENGTH = 200  # job_items.category, embeddings.category


def create_score_job(session: Session, *, model_ref: str, pieces: Iterable[list[tuple[str, str]]],
                     source: dict, use_cache: bool, chunk_size: int, token_id: int | None = None) -> Job:
    """A score job: see `create_item_job`. A model registered with task `embedding` is refused (its output is a
    vector, not named outputs: embed jobs read it)."""
    return create_item_job(session, JobKind.SCORE, model_ref=model_ref, pieces=pieces, source=source,
                           use_cache=use_cache, chunk_size=chunk_size, token_id=token_id)


def create_item_job(session: Session, kind: JobKind, *, model_ref: str, pieces: Iterable[list[tuple]],
                    source: dict, use_cache: bool, chunk_size: int,
                    spec_for: Callable[[ModelVersion], dict] | None = None, token_id: int | None = None) -> Job:
    """Insert a job of a chunked kind (score, embed), its items and its chunks in the caller's transaction.
    `pieces` hold (item id, uri) or (item id, uri, category); `spec_for(version)` gives the job's spec (embed jobs).
    Nothing is enqueued here: the caller commits first, then calls shared.core.dispatch.enqueue_chunks (through
    shared/services/submission.py, which also checks the token's cap and records its Idempotency-Key)."""
    job = new_item_job(session, kind, JobStatus.QUEUED, model_ref=model_ref, source=source, use_cache=use_cache,
                       spec_for=spec_for, token_id=token_id)
    total = 0
    for piece in pieces:
        total += add_items(session, job.id, piece, total, chunk_size)
    if total == 0:
        raise InvalidRequest("the job has no items", field="items")
    add_chunks(session, job, [min(chunk_size, total - no * chunk_size) for no in range(-(-total // chunk_size))])
    return job


def new_item_job(session: Session, kind: JobKind, status: JobStatus, *, model_ref: str, source: dict,
                 use_cache: bool, spec_for: Callable[[ModelVersion], dict] | None = None,
                 token_id: int | None = None) -> Job:
    """The row of a score or embed job, in its first state (queued, or preparing: shared/services/preparation.py),
    without items yet. A score job on a model registered with task `embedding` is refused (its output is a vector,
    not named outputs: embed jobs read it)."""
    version = model_registry.resolve(session, model_ref)
    if kind == JobKind.SCORE and version.task == EMBEDDING_TASK:
        raise Unprocessable(f"model {version.name}@{version.version} is an embedding model: its output is a vector, "
                            "not scores; embed with it (POST /api/v1/jobs/embed)", field="model")
    job = Job(id=str(uuid.uuid4()), kind=kind, status=status, model_version_id=version.id,
              model_ref=model_ref, source=source,
              upload_folder=source.get("folder") if source.get("type") == "upload" else None,
              use_cache=use_cache, token_id=token_id, total_items=0, done_items=0, failed_items=0,
              cached_items=0, total_chunks=0, spec=spec_for(version) if spec_for else None)
    session.add(job)
    session.flush()
    return job


def add_items(session: Session, job_id: str, piece: list[tuple], first: int, chunk_size: int) -> int:
    """Insert a piece of a job's items, the first of them its item number `first` (which gives each its chunk).
    Returns how many; a bad item or an id the job already has is an InvalidRequest."""
    rows = [{"job_id": job_id, **_item_row(item), "chunk_no": (first + n) // chunk_size}
            for n, item in enumerate(piece)]
    if rows:
        try:
            with session.begin_nested():
                _insert_items(session, job_id, rows)
        except IntegrityError:
            raise InvalidRequest("item ids must be unique within a job; "
                                 f"a duplicate is among {rows[0]['item_id']!r}..{rows[-1]['item_id']!r}",
                                 field="id") from None
    return len(rows)


def add_chunks(session: Session, job: Job, item_counts: list[int]) -> None:
    """Insert the job's chunks, pending, chunk n holding item_counts[n] items, and count them on the job."""
    session.execute(insert(Chunk), [
        {"job_id": job.id, "chunk_no": no, "state": ChunkState.PENDING, "attempts": 0, "item_count": count}
        for no, count in enumerate(item_counts)])
    job.total_items, job.total_chunks = sum(item_counts), len(item_counts)


def _item_row(item: tuple) -> dict:
    """One (item id, uri[, category]) checked: the database refuses NUL bytes, and a value over its column."""
    item_id, uri, category = (*item, None) if len(item) == 2 else item
    if not item_id or len(item_id) > MAX_ID_LENGTH:
        raise InvalidRequest(f"item id must be 1-{MAX_ID_LENGTH} characters: {item_id[:50]!r}", field="id")
    if "\x00" in item_id or "\x00" in uri:  # e.g. from a manifest
        raise InvalidRequest(f"item {item_id[:50]!r} holds a NUL byte in its id or image path",
                             field="id" if "\x00" in item_id else "uri")
    if category is not None and (len(category) > MAX_CATEGORY_LENGTH or "\x00" in category):
        raise InvalidRequest(f"the category of item {item_id[:50]!r} must be at most {MAX_CATEGORY_LENGTH} "
                             "characters, without NUL bytes", field="category")
    return {"item_id": item_id, "uri": uri, "category": category}


def _insert_items(session: Session, job_id: str, rows: list[dict]) -> None:
    """On PostgreSQL by COPY: a 100,000-item manifest costs the server a fraction of 100,000 INSERT rows and the
    client no query text to build or split."""
    if not is_postgres(session):
        session.execute(insert(JobItem), rows)
        return
    from psycopg.errors import UniqueViolation

    cursor = session.connection().connection.driver_connection.cursor()
    try:
        with cursor.copy("COPY job_items (job_id, item_id, uri, chunk_no, category) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((job_id, row["item_id"], row["uri"], row["chunk_no"], row["category"]))
    except UniqueViolation as exc:  # the driver's own error: say it as SQLAlchemy would
        raise IntegrityError("COPY job_items", None, exc) from exc


def queue_figures(session: Session) -> dict:
    """For /metrics: jobs by (kind, status), chunks of open jobs by state, items not yet scored in open jobs."""
    by_status = {(kind, status): n for kind, status, n in session.execute(
        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))}
    chunks = dict(session.execute(select(Chunk.state, func.count()).join(Job, Job.id == Chunk.job_id)
                                  .where(Job.status.in_(OPEN_JOB_STATUSES)).group_by(Chunk.state)).all())
    remaining = session.scalar(select(func.coalesce(func.sum(Job.total_items - Job.done_items), 0))
                               .where(Job.status.in_(OPEN_JOB_STATUSES)))
    return {"jobs": by_status, "chunks": chunks, "items_remaining": int(remaining or 0)}


def get_job(session: Session, job_id: str) -> Job:
    return get_or_404(session, Job, job_id, "job")


def lock_job(session: Session, job_id: str) -> Job | None:
    """The job row, locked for the rest of the caller's transaction (SELECT ... FOR UPDATE); None when there is no
    such job. Take it before any chunk or run row of the job."""
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


def cancel_job(session: Session, job_id: str, who: Caller = ANYONE) -> Job:
    """Stop handing out chunks (a chunk already running finishes; its results are kept), or stop a
    training at its next batch. Only the token that created the job, or an admin, may cancel it.
    preparing|queued|running -> canceled for the job (a preparing job's reader stops at its next piece),
    pending|queued|delivered -> canceled for its chunks or run. Locks the job row."""
    job = lock_job(session, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if not who.is_admin and job.token_id != who.token_id:
        raise Forbidden("only the token that created this job, or an admin token, may cancel it")
    if job.status in FINAL_JOB_STATUSES:
        return job
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.state.in_(
        (ChunkState.PENDING, ChunkState.QUEUED, ChunkState.DELIVERED))).values(state=ChunkState.CANCELED,
                                                                               finished_at=utcnow()))

    # a queued training never starts; a running one sees the status at its next batch and stops
    session.execute(update(TrainRun).where(TrainRun.job_id == job_id,
                                           TrainRun.state.in_((RunState.PENDING, RunState.QUEUED, RunState.DELIVERED)))
                    .values(state=RunState.CANCELED))
    job.status, job.finished_at = JobStatus.CANCELED, utcnow()
    return job


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return max(0.0, (b - a).total_seconds())


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _timings(job: Job, now) -> dict:
    return {"created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at), "last_heartbeat_at": _iso(job.heartbeat_at),
            "seconds_since_heartbeat": _seconds(job.heartbeat_at, now),
            "elapsed_seconds": _seconds(job.started_at, job.finished_at or now)}


def job_json(session: Session, job: Job) -> dict:
    now = utcnow()
    common = {"id": job.id, "kind": job.kind, "status": job.status, "timings": _timings(job, now),
              "source": job.source, "error": job.error,
              "links": {"self": f"/api/v1/jobs/{job.id}", "cancel": f"/api/v1/jobs/{job.id}/cancel"}}
    if job.kind == JobKind.TRAIN:
        common["links"]["epochs"] = f"/api/v1/jobs/{job.id}/epochs"
        common["links"]["metrics"] = f"/api/v1/jobs/{job.id}/metrics"  # deprecated: the old path of epochs
        return {**common, **train_json(session, job, session.get(TrainRun, job.id))}
    if job.kind == JobKind.INDEX:
        return {**common, **index_jobs.index_job_json(session, job)}
    if job.kind == JobKind.IMPORT:
        described = model_imports.import_json(session, job)
        common["links"].update(described.pop("links"))
        return {**common, **described}
    version = session.get(ModelVersion, job.model_version_id)
    chunk_states = dict(session.execute(
        select(Chunk.state, func.count()).where(Chunk.job_id == job.id).group_by(Chunk.state)).all())
    elapsed = common["timings"]["elapsed_seconds"]
    done = job.done_items
    rate = done / elapsed if elapsed and done else None
    preparing = job.status == JobStatus.PREPARING
    total = 0 if preparing else job.total_items  # while preparing, total_items counts the rows read so far
    remaining = total - done
    eta = remaining / rate if rate and job.status not in FINAL_JOB_STATUSES else None
    common["links"]["results"] = f"/api/v1/jobs/{job.id}/results"
    return {
        **common,
        "model": {"requested": job.model_ref, "ref": f"{version.name}@{version.version}", "task": version.task},
        "progress": {
            "total": total, "done": done, "succeeded": done - job.failed_items,
            "failed": job.failed_items, "from_cache": job.cached_items, "remaining": remaining,
            "percent": round(100.0 * done / total, 2) if total else 0.0,
            "rows_read": job.total_items,
            "images_per_second": round(rate, 2) if rate else None,
            "eta_seconds": round(eta, 1) if eta is not None else None,
        },
        "chunks": {"total": job.total_chunks, **{state.value: chunk_states.get(state, 0) for state in ChunkState}},
        "cache": job.use_cache,
        **({"embedding": embedding_json(job)} if job.kind == JobKind.EMBED else {}),
        **({"drift": drift.job_drift(session, job.id)} if job.kind == JobKind.SCORE else {}),
        **_export_json(session.get(ResultExport, job.id)),
    }


def _export_json(row: ResultExport | None) -> dict:
    """A job's `export` (shared/services/job_exports.py), when it has one."""
    if row is None:
        return {}
    return {"export": {"uri": row.uri, "status": row.status, "rows": row.rows, "error": row.error, "tries": row.tries,
                       "updated_at": row.updated_at.isoformat() if row.updated_at else None}}


def jobs_page(session: Session, *, status: JobStatus | None = None, model: str | None = None,
              kind: JobKind | None = None, limit: int, after: Key | None = None) -> tuple[list[Job], Key | None]:
    """Jobs newest first, keyed by (created_at, id); `model` matches score and embed jobs by the version they use,
    train and import jobs by the name they make. Returns the page and the key of its last job when more follow."""
    q = select(Job)
    if status:
        q = q.where(Job.status == status)
    if kind:
        q = q.where(Job.kind == kind)
    if model:
        name, _, _ = model.partition("@")
        q = q.outerjoin(ModelVersion, ModelVersion.id == Job.model_version_id).where(
            (ModelVersion.name == name) | (Job.kind.in_((JobKind.TRAIN, JobKind.IMPORT)) & (Job.model_ref == name)))
    rows, next_key = keyset.page(session, q, (Job.created_at, Job.id), after=after, limit=limit, descending=True,
                                 key_of=lambda row: (row[0].created_at, row[0].id))
    return [row[0] for row in rows], next_key


def result_json(r: Result) -> dict:
    return {"id": r.item_id, "status": r.status, "outputs": r.outputs, "error": r.error,
            "from_cache": r.from_cache, "content_hash": r.content_hash}


def _results(job: Job, *columns):
    """SELECT `columns` of the job's results by item id; an embed job's also give each item's category (the
    category is the item's, not an output: it is read from job_items, not stored twice)."""
    if job.kind != JobKind.EMBED:
        return select(*columns).where(Result.job_id == job.id).order_by(Result.item_id)
    return (select(*columns, JobItem.category).outerjoin(JobItem, (JobItem.job_id == Result.job_id)
                                                           & (JobItem.item_id == Result.item_id))
            .where(Result.job_id == job.id).order_by(Result.item_id))


def results_page(session: Session, job: Job, *, after: Key | None, limit: int,
                 status: str | None = None) -> tuple[list[dict], Key | None]:
    """A job's results by item id (keyed by it); an embed job's carry each item's category."""
    q = _results(job, Result)
    if status:
        q = q.where(Result.status == status)
    rows, next_key = keyset.page(session, q, (Result.item_id,), after=after, limit=limit,
                                 key_of=lambda row: (row[0].item_id,))
    return [result_json(row[0]) | ({"category": row[1]} if len(row) > 1 else {}) for row in rows], next_key


def output_columns_of(session: Session, job: Job) -> list[str]:
    """The columns a download of the job's results has after id, status, error and from_cache."""
    if job.kind == JobKind.EMBED:
        return ["category", "dim"]  # the vectors themselves are in the catalog's embeddings, not in results
    if job.kind != JobKind.SCORE or job.model_version_id is None:
        return []  # a train, import or index job has no results: the header alone, as its JSON page is empty
    version = session.get(ModelVersion, job.model_version_id)
    return output_columns(version.task, version.output_names, version.class_names)


def result_columns_query(job: Job):
    """SELECT item id, status, error, from_cache, outputs (and an embed job's category) of the job's results."""
    return _results(job, Result.item_id, Result.status, Result.error, Result.from_cache, Result.outputs)


def results_csv(session: Session, job: Job) -> Iterator[str]:
    """CSV text in pieces, read from the database a thousand rows at a time."""
    columns = output_columns_of(session, job)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "status", "error", "from_cache", *columns])
    q = result_columns_query(job).execution_options(yield_per=1000)
    for n, (item_id, status, error, from_cache, outputs, *category) in enumerate(session.execute(q), 1):
        outputs = {**(outputs or {}), **({"category": category[0]} if category else {})}
        writer.writerow([item_id, status, error or "", int(bool(from_cache)),
                         *[outputs.get(c, "") for c in columns]])
        if n % 1000 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
