"""A catalog's vector index as jobs of kind `index`: built from the catalog's embeddings, or extended by a delta.

The lifecycle of an index job, one function per transition (as for model imports):
- `create_index_job` (web front, CLI): a `queued` job whose `spec` says the catalog, the embedding space, the mode
  (build | delta) and the build parameters. Checked at once: the catalog has vectors in that space, and a delta has
  an index to extend.
- `claim`: queued|running -> running under the job row's lock; a final job is left alone, so a re-sent or
  redelivered task does nothing.
- `run_index_job` reads the vectors (streamed from the database in pages), builds or extends the index outside any
  transaction while `total_items`/`done_items` show its progress and a thread keeps its heartbeat, writes the files
  to the model store (a folder per run, never overwritten), then registers the next version and finishes the job
  in one transaction (running -> succeeded), or fails it with a reason. A run whose worker died is re-sent by the
  sweeper once its heartbeat is stale; of two runs of one job, the first to register wins and the other removes
  its files.

A build reads only items not deleted, so deleted items are purged then; a delta adds the items of the space that the
extended version does not hold (whatever their time stamps), without retraining. Queries use the highest version of
a (catalog, space) (`latest`); the processes that serve them swap to it on their next query.
"""
from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.db import is_outage, session_scope
from shared.core.errors import Conflict, InvalidRequest, NotFound
from shared.core.names import check_name
from shared.core.paths import path_inside
from shared.core.states import OPEN_JOB_STATUSES, JobKind, JobStatus
from shared.core.tables import Embedding, Job, VectorIndex, utcnow
from shared.search.vector_index import BuildParams, CatalogIndex
from shared.services import single_task_jobs

log = logging.getLogger(__name__)

INDEX_MODES = ("build", "delta")
PAGE = 5000  # vectors read per round trip
PROGRESS_EVERY = 1.0  # seconds between progress writes
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


class _Progress:
    """Writes done/total to the job row at most once per PROGRESS_EVERY seconds (also a heartbeat)."""

    def __init__(self, job_id: str):
        self.job_id, self._last = job_id, 0.0

    def __call__(self, done: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY:
            return
        self._last = now
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == self.job_id, Job.status == JobStatus.RUNNING)
                            .values(done_items=done, total_items=total, heartbeat_at=utcnow()))


class _Heartbeat(threading.Thread):
    """The job's liveness while it builds, at a fixed interval whatever FAISS is doing (training IVF lists sends no
    progress): the sweeper re-sends an index job whose heartbeat went stale for IMGQ_HEARTBEAT_TIMEOUT."""

    def __init__(self, job_id: str, interval: float):
        super().__init__(name="imgq-index-heartbeat", daemon=True)
        self.job_id, self.interval = job_id, interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                with session_scope() as session:
                    session.execute(update(Job).where(Job.id == self.job_id, Job.status == JobStatus.RUNNING)
                                    .values(heartbeat_at=utcnow()))
            except Exception:  # the database is away: the next beat tries again
                log.warning("index job %s: heartbeat failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._stopped.set()


def _live(catalog: str, space: str):
    return (Embedding.catalog == catalog, Embedding.space == space, Embedding.deleted_at.is_(None))


def read_vectors(catalog: str, space: str, only: set[str] | None = None
                 ) -> tuple[list[str], list[str | None], np.ndarray]:
    """The live (not deleted) vectors of a catalog in a space, in pages of PAGE rows, into one float32 array; `only`
    restricts them to these item ids."""
    with session_scope() as session:
        where = _live(catalog, space)
        if only is None:
            count = session.scalar(select(func.count()).select_from(Embedding).where(*where))
            dim = session.scalar(select(Embedding.dim).where(*where).limit(1))
        else:
            count, dim = len(only), session.scalar(select(Embedding.dim).where(*where).limit(1))
        ids: list[str] = []
        categories: list[str | None] = []
        vectors = np.empty((count or 0, dim or 0), dtype=np.float32)
        query = select(Embedding.item_id, Embedding.category, Embedding.vector, Embedding.dim).where(*where)
        pages = [sorted(only)[i:i + PAGE] for i in range(0, len(only), PAGE)] if only is not None else [None]
        for page in pages:
            q = query if page is None else query.where(Embedding.item_id.in_(page))
            for item_id, category, vector, row_dim in session.execute(q.execution_options(yield_per=PAGE)):
                if row_dim != dim:
                    raise ValueError(f"item {item_id} has a {row_dim}-dimensional vector; the space's vectors have "
                                     f"{dim}")
                if len(ids) == len(vectors):  # rows written since the count: grow
                    vectors = np.concatenate([vectors, np.empty((PAGE, dim), np.float32)])
                vectors[len(ids)] = np.frombuffer(vector, dtype="<f4")
                ids.append(item_id)
                categories.append(category)
    return ids, categories, vectors[:len(ids)]


def _live_ids(catalog: str, space: str) -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(Embedding.item_id).where(*_live(catalog, space))
                                   .execution_options(yield_per=PAGE)))


def _build(spec: dict, progress: _Progress) -> CatalogIndex:
    ids, categories, vectors = read_vectors(spec["catalog"], spec["space"])
    if not ids:
        raise ValueError(f"catalog {spec['catalog']} has no live vectors in space {spec['space']!r}")
    progress(0, len(ids), force=True)
    return CatalogIndex.build(ids, categories, vectors, BuildParams(**spec["params"]),
                              progress=lambda done, total: progress(done, total))


def _extend(spec: dict, base: VectorIndex, progress: _Progress) -> tuple[CatalogIndex, int]:
    index = CatalogIndex.load(Path(base.path))
    missing = {i for i in _live_ids(spec["catalog"], spec["space"]) if not index.contains(i)}
    progress(0, len(missing), force=True)
    ids, categories, vectors = read_vectors(spec["catalog"], spec["space"], only=missing)
    added = index.add(ids, categories, vectors) if ids else 0
    progress(len(ids), len(ids), force=True)
    return index, added


def _register(job_id: str, spec: dict, index: CatalogIndex, folder: Path, watermark, added: int | None) -> int | None:
    """running -> succeeded with the next version of the index, in one transaction; None when the job was final."""
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
                    dim=index.dim, item_count=index.size, path=str(folder), watermark=watermark, job_id=job_id))
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


def run_index_job(job_id: str, settings: Settings) -> str:
    """Build or extend the index of job `job_id`. Safe to run twice: a final job is skipped; a second run of a
    running job (its worker died) builds again into its own folder. A database outage propagates (the task's
    message goes back to the queue)."""
    with session_scope() as session:
        spec = claim(session, job_id)
    if spec is None:
        return "job is final"
    # a folder per run: a second run of the same job (re-sent while the first was slow, not dead) never touches the
    # files the first one may have registered
    folder = index_folder(settings.model_store, spec["catalog"], spec["space"], f"{job_id}-{uuid.uuid4().hex[:8]}")
    progress = _Progress(job_id)
    watermark = utcnow()
    started = time.monotonic()
    beat = _Heartbeat(job_id, max(0.2, min(10.0, settings.heartbeat_timeout / 4)))
    beat.start()
    try:
        if spec["mode"] == "delta":
            with session_scope() as session:
                base = session.scalar(select(VectorIndex).where(
                    VectorIndex.catalog == spec["catalog"], VectorIndex.space == spec["space"],
                    VectorIndex.version == spec["base_version"]))
                if base is not None:
                    session.expunge(base)
            if base is None:
                raise ValueError(f"index version {spec['base_version']} to extend is gone")
            index, added = _extend(spec, base, progress)
        else:
            index, added = _build(spec, progress), None
        index.save(folder)
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if is_outage(exc):
            raise
        log.exception("index job %s failed", job_id)
        fail(job_id, f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        beat.stop()
    version = _register(job_id, spec, index, folder, watermark, added)
    if version is None:
        shutil.rmtree(folder, ignore_errors=True)
        return "job is final"
    log.info("index job %s: %s of catalog %s, space %s: version %s, %d vectors, %.1f s", job_id, spec["mode"],
             spec["catalog"], spec["space"], version, index.size, time.monotonic() - started)
    return f"version {version}"


def remove_stray_folders(settings: Settings, older_than: float) -> int:
    """Remove index folders no version points at whose job has ended (a run that lost to another, or was killed
    before it registered), and half-written save folders, once they are `older_than` seconds old. Returns how many."""
    root = settings.model_store / "indexes"
    if not root.is_dir():
        return 0
    cut = time.time() - older_than
    candidates = [p for p in root.glob("*/*/*") if p.is_dir() and p.stat().st_mtime < cut]
    if not candidates:
        return 0
    with session_scope() as session:
        registered = set(session.scalars(select(VectorIndex.path)))
        open_jobs = {str(j) for j in session.scalars(select(Job.id).where(Job.kind == JobKind.INDEX,
                                                                          Job.status.in_(OPEN_JOB_STATUSES)))}
    removed = 0
    for path in candidates:
        half_written = path.name.startswith(".")
        if str(path) in registered or (not half_written and path.name[:36] in open_jobs):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
        log.info("removed index folder %s (no version uses it)", path)
    return removed


def index_json(row: VectorIndex) -> dict:
    return {"catalog": row.catalog, "space": row.space, "version": row.version, "mode": row.mode,
            "base_version": row.base_version, "items": row.item_count, "dim": row.dim, "params": row.params,
            "job_id": row.job_id, "created_at": row.created_at.isoformat()}


def index_job_json(session: Session, job: Job) -> dict:
    """What GET /api/v1/jobs/<id> adds for an index job."""
    spec = job.spec or {}
    row = None
    if spec.get("version") is not None:
        row = session.scalar(select(VectorIndex).where(
            VectorIndex.catalog == spec["catalog"], VectorIndex.space == spec["space"],
            VectorIndex.version == spec["version"]))
    total, done = job.total_items, job.done_items
    return {"index": {"catalog": spec.get("catalog"), "space": spec.get("space"), "mode": spec.get("mode"),
                      "base_version": spec.get("base_version"), "params": spec.get("params"),
                      "version": spec.get("version"), "built": index_json(row) if row is not None else None},
            "progress": {"total": total, "done": done,
                         "percent": round(100.0 * done / total, 2) if total else 0.0}}
