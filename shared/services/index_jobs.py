"""A catalog's vector index as jobs of kind `index`: built from the catalog's embeddings, or extended by a delta.

The lifecycle of an index job, one function per transition (as for model imports); the maintenance worker runs
the job itself (worker/index_builder.py) and records it only through these:
- `create_index_job` (web front, CLI): a `queued` job whose `spec` says the catalog, the embedding space, the mode
  (build | delta) and the build parameters. Checked at once: the catalog has vectors in that space, and a delta has
  an index to extend.
- `claim`: queued|running -> running under the job row's lock; a final job is left alone, so a re-sent or
  redelivered task does nothing.
- `record_progress` and `record_heartbeat` while it builds (a running job only): its `total_items`/`done_items`, and
  the liveness the sweeper watches (an index job silent for IMGQ_HEARTBEAT_TIMEOUT is re-sent).
- `register_version`: running -> succeeded with the next version of the (catalog, space), in one transaction; of two
  runs of one job, the first to register wins. `fail`: running -> failed with a reason.

Each run writes its files to a folder of its own under the model store (`index_folder`), never overwritten.
A build reads only items not deleted, so deleted items are purged then; a delta adds the items of the space that the
extended version does not hold (whatever their time stamps), without retraining. Queries use the highest version of
a (catalog, space) (`latest`); the processes that serve them swap to it on their next query.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.core.db import session_scope
from shared.core.errors import Conflict, InvalidRequest, NotFound
from shared.core.names import check_name
from shared.core.paths import path_inside
from shared.core.states import OPEN_JOB_STATUSES, JobKind, JobStatus
from shared.core.tables import Embedding, Job, VectorIndex, utcnow
from shared.core.vocab import INDEX_MODES
from shared.search.vector_index import BuildParams, CatalogIndex
from shared.services import single_task_jobs

log = logging.getLogger(__name__)

STORE_TRIES = 3  # two builds of one (catalog, space) may race for the next version number


def index_folder(store: Path, catalog: str, space: str, job_id: str) -> Path:
    """Where an index job writes its files: one folder per job under the model store. A space names a model and a
    layer, and may hold characters a folder name should not, so the folder is a readable slug plus a short hash."""
    slug = re.sub(r"[^A-Za-z0-9_.@-]", "_", space)[:80]
    digest = hashlib.sha256(space.encode()).hexdigest()[:8]
    return path_inside(store, "indexes", catalog, f"{slug}-{digest}", job_id)


def spaces_of(session: Session, catalog: str) -> list[str]:
    """The embedding spaces a catalog has vectors in, most recently written first."""
    rows = session.execute(select(Embedding.space, func.max(Embedding.created_at).label("last"))
                           .where(Embedding.catalog == catalog).group_by(Embedding.space)
                           .order_by(func.max(Embedding.created_at).desc())).all()
    return [r.space for r in rows]


def pick_space(session: Session, catalog: str, space: str | None) -> str:
    """The space a request means: the one it names, or the catalog's only one."""
    check_name(catalog, "catalog")
    known = spaces_of(session, catalog)
    if not known:
        raise NotFound(f"catalog {catalog} has no embeddings; embed its items first (POST /api/v1/jobs/embed)",
                       field="catalog")
    if space is None:
        if len(known) > 1:
            raise InvalidRequest(f"catalog {catalog} has vectors in several embedding spaces ({', '.join(known)}); "
                                 "say which one in 'space'", field="space")
        return known[0]
    if space not in known:
        raise NotFound(f"catalog {catalog} has no vectors in space {space!r}; it has: {', '.join(known)}",
                       field="space")
    return space


def latest(session: Session, catalog: str, space: str) -> VectorIndex | None:
    return session.scalar(select(VectorIndex).where(VectorIndex.catalog == catalog, VectorIndex.space == space)
                          .order_by(VectorIndex.version.desc()).limit(1))


def _space_version_id(session: Session, catalog: str, space: str) -> int:
    """The model version that embeds this space's queries: the version of the job that wrote its latest vector."""
    job_id = session.scalar(select(Embedding.job_id).where(Embedding.catalog == catalog, Embedding.space == space)
                            .order_by(Embedding.created_at.desc()).limit(1))
    version_id = session.scalar(select(Job.model_version_id).where(Job.id == job_id))
    if version_id is None:
        raise Conflict(f"the embed job that wrote space {space!r} of catalog {catalog} is gone; embed the catalog "
                       "again", field="space")
    return version_id


def create_index_job(session: Session, *, catalog: str, space: str | None, mode: str, params: BuildParams | None,
                     token_id: int | None = None) -> Job:
    """-> queued. Insert the job in the caller's transaction; the caller commits, then sends it
    (shared.core.dispatch.enqueue_index). A build takes `params`; a delta takes none: it extends the latest version
    with that version's own parameters."""
    if mode not in INDEX_MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(INDEX_MODES)}, got {mode!r}", field="mode")
    space = pick_space(session, catalog, space)
    base = latest(session, catalog, space)
    if mode == "delta":
        if base is None:
            raise Conflict(f"catalog {catalog} has no index in space {space!r} to extend; build one first "
                           "(mode build)", field="mode")
        if params is not None:
            raise InvalidRequest("a delta extends the latest index with its own parameters; give params only to a "
                                 "build", field="params")
        params = BuildParams.model_validate({k: v for k, v in base.params.items() if k in BuildParams.model_fields})
    elif params is None:
        raise InvalidRequest("a build needs its parameters", field="params")
    job = Job(id=str(uuid.uuid4()), kind=JobKind.INDEX, status=JobStatus.QUEUED,
              model_version_id=_space_version_id(session, catalog, space), model_ref=space[:120],
              token_id=token_id, use_cache=False, source={"type": JobKind.INDEX.value, "catalog": catalog},
              spec={"catalog": catalog, "space": space, "mode": mode, "params": params.model_dump(),
                    "base_version": base.version if mode == "delta" else None},
              total_items=0, done_items=0, failed_items=0, cached_items=0, total_chunks=0)
    session.add(job)
    return job


def claim(session: Session, job_id: str) -> dict | None:
    """queued|running -> running, under the job row's lock. Returns the job's spec, or None when it is final."""
    job = single_task_jobs.claim(session, job_id, JobKind.INDEX)
    return None if job is None else dict(job.spec)


def record_progress(job_id: str, done: int, total: int) -> None:
    """A running job's progress (it doubles as its heartbeat)."""
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                        .values(done_items=done, total_items=total, heartbeat_at=utcnow()))


def record_heartbeat(job_id: str) -> None:
    """A running job's liveness, at a fixed interval whatever FAISS is doing (training IVF lists sends no
    progress)."""
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                        .values(heartbeat_at=utcnow()))


def find_version(session: Session, catalog: str, space: str, version: int) -> VectorIndex | None:
    return session.scalar(select(VectorIndex).where(VectorIndex.catalog == catalog, VectorIndex.space == space,
                                                    VectorIndex.version == version))


def register_version(job_id: str, spec: dict, index: CatalogIndex, path: str, watermark,
                     added: int | None) -> int | None:
    """running -> succeeded with `index` (saved at `path`: its folder, or its copy in the object store,
    shared/services/index_store.py) as the next version of its (catalog, space), in one
    transaction, under the job row's lock; None when the job was final. `added`: a delta's new vectors."""
    for attempt in range(1, STORE_TRIES + 1):
        try:
            with session_scope() as session:
                job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
                if job is None or job.status not in OPEN_JOB_STATUSES:
                    return None
                current = latest(session, spec["catalog"], spec["space"])
                version = (current.version if current else 0) + 1
                described = index.describe()
                session.add(VectorIndex(
                    catalog=spec["catalog"], space=spec["space"], version=version,
                    model_version_id=job.model_version_id, mode=spec["mode"], base_version=spec.get("base_version"),
                    params={**spec["params"], "built": described, **({"added": added} if added is not None else {})},
                    dim=index.dim, item_count=index.size, path=str(path), watermark=watermark, job_id=job_id))
                job.status, job.finished_at, job.heartbeat_at = JobStatus.SUCCEEDED, utcnow(), utcnow()
                job.spec = {**spec, "version": version}
                job.done_items = job.total_items = added if added is not None else index.size
                return version
        except IntegrityError:
            if attempt == STORE_TRIES:
                raise
            log.info("index job %s: version number taken by a concurrent build; trying again", job_id)
            time.sleep(0.2 * attempt)
    return None


def fail(job_id: str, reason: str) -> bool:
    """running -> failed with `reason`, unless the job is final already."""
    with session_scope() as session:
        return bool(session.execute(update(Job).where(Job.id == job_id, Job.status.in_(OPEN_JOB_STATUSES)).values(
            status=JobStatus.FAILED, error=reason[:2000], finished_at=utcnow())).rowcount)


def index_json(row: VectorIndex) -> dict:
    return {"catalog": row.catalog, "space": row.space, "version": row.version, "mode": row.mode,
            "base_version": row.base_version, "items": row.item_count, "dim": row.dim, "params": row.params,
            "job_id": row.job_id, "created_at": row.created_at.isoformat()}


def index_job_json(session: Session, job: Job) -> dict:
    """What GET /api/v1/jobs/<id> adds for an index job."""
    spec = job.spec or {}
    row = None
    if spec.get("version") is not None:
        row = find_version(session, spec["catalog"], spec["space"], spec["version"])
    total, done = job.total_items, job.done_items
    return {"index": {"catalog": spec.get("catalog"), "space": spec.get("space"), "mode": spec.get("mode"),
                      "base_version": spec.get("base_version"), "params": spec.get("params"),
                      "version": spec.get("version"), "built": index_json(row) if row is not None else None},
            "progress": {"total": total, "done": done,
                         "percent": round(100.0 * done / total, 2) if total else 0.0}}
