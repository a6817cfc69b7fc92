"""An index job run by the maintenance worker: read the catalog's vectors, build or extend the FAISS index, save it.

`run_index_job` claims the job (shared/services/index_jobs.py records every transition), reads the vectors
(streamed from the database in pages), builds or extends the index (shared/search/vector_index.py) outside any
transaction while `total_items`/`done_items` show its progress and a heartbeat (worker/heartbeat.py) keeps the job
alive, writes the files to a folder of its own under the model store, then registers the next version and finishes
the job in one transaction, or fails it with a reason. `remove_stray_folders` (the sweeper) removes the folders of
runs that never registered.

Invariants: a run never writes into another run's folder, so of two runs of one job (a re-sent message while the
first was slow, or a worker that died mid-build) the first to register wins and the other removes its files; a
database outage propagates, so the task's message goes back to the queue.
"""
from __future__ import annotations

import logging
import shutil
import time
import uuid
from functools import partial
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from shared.core.config import Settings
from shared.core.db import is_outage, session_scope
from shared.core.states import OPEN_JOB_STATUSES, JobKind
from shared.core.tables import Embedding, Job, VectorIndex, utcnow
from shared.search.vector_index import BuildParams, CatalogIndex
from shared.services import index_jobs, index_store
from worker.heartbeat import Heartbeat, interval_for

log = logging.getLogger(__name__)

PAGE = 5000  # vectors read per round trip
PROGRESS_EVERY = 1.0  # seconds between progress writes


class _Progress:
    """Writes done/total to the job row at most once per PROGRESS_EVERY seconds (also a heartbeat)."""

    def __init__(self, job_id: str):
        self.job_id, self._last = job_id, 0.0

    def __call__(self, done: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY:
            return
        self._last = now
        index_jobs.record_progress(self.job_id, done, total)


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


def _extend(spec: dict, base: VectorIndex, progress: _Progress, settings: Settings) -> tuple[CatalogIndex, int]:
    index = CatalogIndex.load(index_store.local_folder(settings, base.path))
    missing = {i for i in _live_ids(spec["catalog"], spec["space"]) if not index.contains(i)}
    progress(0, len(missing), force=True)
    ids, categories, vectors = read_vectors(spec["catalog"], spec["space"], only=missing)
    added = index.add(ids, categories, vectors) if ids else 0
    progress(len(ids), len(ids), force=True)
    return index, added


def _base_of(spec: dict) -> VectorIndex:
    """The version a delta extends (detached)."""
    with session_scope() as session:
        base = index_jobs.find_version(session, spec["catalog"], spec["space"], spec["base_version"])
        if base is not None:
            session.expunge(base)
    if base is None:
        raise ValueError(f"index version {spec['base_version']} to extend is gone")
    return base


def _build_and_save(job_id: str, spec: dict, folder: Path, settings: Settings) -> tuple[CatalogIndex, int | None]:
    """(the index built or extended, and saved in `folder`; a delta's count of added vectors). A heartbeat keeps the
    job alive at a fixed interval whatever FAISS is doing (training IVF lists sends no progress)."""
    progress = _Progress(job_id)
    with Heartbeat(partial(index_jobs.record_heartbeat, job_id), interval_for(settings.heartbeat_timeout),
                   label=f"index job {job_id}", name="imgq-index-heartbeat"):
        if spec["mode"] == "delta":
            index, added = _extend(spec, _base_of(spec), progress, settings)
        else:
            index, added = _build(spec, progress), None
        index.save(folder)
    return index, added


def run_index_job(job_id: str, settings: Settings) -> str:
    """Build or extend the index of job `job_id`. Safe to run twice: a final job is skipped; a second run of a
    running job (its worker died) builds again into its own folder. A database outage propagates (the task's
    message goes back to the queue)."""
    with session_scope() as session:
        spec = index_jobs.claim(session, job_id)
    if spec is None:
        return "job is final"
    # a folder per run: a second run of the same job (re-sent while the first was slow, not dead) never touches the
    # files the first one may have registered
    folder = index_jobs.index_folder(settings.model_store, spec["catalog"], spec["space"],
                                     f"{job_id}-{uuid.uuid4().hex[:8]}")
    watermark = utcnow()
    started = time.monotonic()
    try:
        index, added = _build_and_save(job_id, spec, folder, settings)
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if is_outage(exc):
            raise
        log.exception("index job %s failed", job_id)
        index_jobs.fail(job_id, f"{type(exc).__name__}: {exc}")
        return "failed"
    path = index_store.publish(settings, folder)  # the folder itself, or its copy in the object store
    version = index_jobs.register_version(job_id, spec, index, path, watermark, added)
    if version is None:
        index_store.discard(settings, path)
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
