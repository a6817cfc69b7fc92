"""A chunk's life in the database: claim, heartbeat, record results batch by batch, finish, give up.

Invariants:
- Every write is idempotent: results are inserted with ON CONFLICT DO NOTHING and the job's counters
  grow only by the rows really inserted, so a chunk delivered twice counts once.
- Every transition after `claim` is fenced by the attempt number (compare-and-set on `attempts` and
  `state`): an attempt that lost its chunk to a newer one (it was presumed dead) changes nothing.
- Locks are taken job row first, then chunk row, everywhere.
- A chunk whose workers died `max_attempts` times is not failed whole: its untried items are then
  scored one at a time ("isolation"), each one named as the chunk's suspect before it is scored, and
  only an item that was the suspect of POISON_DEATHS deaths in a row is failed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import case, func, select, text, update
from sqlalchemy.orm import Session

from shared.core.db import insert_ignoring_conflicts, is_postgres
from shared.core.states import (
    CHUNKED_JOB_KINDS,
    FINAL_JOB_STATUSES,
    OPEN_JOB_STATUSES,
    TERMINAL_CHUNK_STATES,
    UNSENT_CHUNK_STATES,
    ChunkState,
    JobKind,
    JobStatus,
)
from shared.core.tables import Chunk, Job, JobItem, ModelVersion, Result, ScoreCache, utcnow
from shared.services.jobs import lock_job

POISON_DEATHS = 2  # deaths while an item was scored alone before that item is failed


@dataclass
class ClaimedChunk:
    job_id: str
    chunk_no: int
    attempt: int
    model_version: ModelVersion
    use_cache: bool
    items: list[tuple[str, str]]  # (item id, uri) still without a result
    isolate: bool = False  # score the items one at a time, naming each as the suspect first
    upload_folder: str | None = None  # the job's own uploads: the only part of the upload dir it may read


def _lock_chunk(session: Session, job_id: str, chunk_no: int) -> Chunk | None:
    return session.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == chunk_no)
                          .with_for_update())


def _owned(job_id: str, chunk_no: int, attempt: int):
    """The fence: the chunk is still running the given attempt."""
    return (Chunk.job_id == job_id, Chunk.chunk_no == chunk_no, Chunk.attempts == attempt,
            Chunk.state == ChunkState.RUNNING)


@dataclass
class JobModel:
    """What a chunk's job runs: its model version, and the job's kind and spec (an embed job's space)."""
    version: ModelVersion
    kind: JobKind
    spec: dict | None = None


def model_for(session: Session, job_id: str, chunk_no: int) -> JobModel | str:
    """The model version a chunk needs, with its job's kind and spec (read only), or why the chunk need not run."""
    row = session.execute(select(Job.status, Job.model_version_id, Job.kind, Job.spec, Chunk.state)
                          .join(Chunk, Chunk.job_id == Job.id)
                          .where(Job.id == job_id, Chunk.chunk_no == chunk_no)).first()
    if row is None:
        return "unknown chunk"
    if row.state in TERMINAL_CHUNK_STATES:
        return f"chunk already {row.state}"
    version = session.get(ModelVersion, row.model_version_id)
    session.expunge(version)
    return JobModel(version, JobKind(row.kind), row.spec)


def mark_delivered(session: Session, job_id: str, chunk_no: int, worker: str) -> None:
    """pending|queued -> delivered: a worker took the chunk's message off the queue, so from now on its
    silence is visible. A worker killed between taking a message and claiming the chunk would otherwise
    leave it queued, its message held by a dead consumer until the broker's visibility timeout."""
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == chunk_no,
                                        Chunk.state.in_(UNSENT_CHUNK_STATES))
                    .values(state=ChunkState.DELIVERED, worker=worker, heartbeat_at=utcnow()))


def _unscored(session: Session, job_id: str, chunk_no: int, first_attempt: bool) -> list[tuple[str, str]]:
    """Items of the chunk without a result. A first attempt has none to exclude; a retry looks its own ids
    up one by one (`scored_among`)."""
    items = [tuple(row) for row in session.execute(
        select(JobItem.item_id, JobItem.uri).where(JobItem.job_id == job_id, JobItem.chunk_no == chunk_no)
        .order_by(JobItem.item_id))]
    if first_attempt or not items:
        return items
    scored = set(session.scalars(*scored_among(session, job_id, [item_id for item_id, _ in items])))
    return [item for item in items if item[0] not in scored]


# A LATERAL subquery with LIMIT cannot be flattened into a join, so PostgreSQL probes the results' primary key
# once per id whatever its statistics say. `job_id = :job AND item_id IN (...)` or an anti-join let the planner,
# with statistics from before the job grew, read every result the job has written and filter them.
_SCORED_AMONG_PG = text("""
SELECT u.item_id FROM unnest(CAST(:item_ids AS text[])) AS u(item_id)
CROSS JOIN LATERAL (SELECT 1 FROM results r WHERE r.job_id = :job_id AND r.item_id = u.item_id LIMIT 1) AS hit""")


def scored_among(session: Session, job_id: str, item_ids: list[str]) -> tuple:
    """(statement, parameters) finding which of `item_ids` already have a result, one key lookup per id."""
    if is_postgres(session):
        return _SCORED_AMONG_PG, {"job_id": job_id, "item_ids": item_ids}
    return select(Result.item_id).where(Result.job_id == job_id, Result.item_id.in_(item_ids)), {}


def claim(session: Session, job_id: str, chunk_no: int, *, worker: str,
          heartbeat_timeout: float, max_attempts: int) -> ClaimedChunk | str:
    """pending|queued|delivered|running(dead) -> running, attempt + 1; or say why not (a string).
    Locks the job row, then the chunk row. A running chunk is dead when its heartbeat is stale, or when it
    names this very process (a pool process runs one task at a time, so it is not running it now)."""
    job = lock_job(session, job_id)
    chunk = _lock_chunk(session, job_id, chunk_no)
    if job is None or chunk is None:
        return "unknown chunk"
    now = utcnow()
    if chunk.state in TERMINAL_CHUNK_STATES:
        return f"chunk already {chunk.state}"
    if job.status in FINAL_JOB_STATUSES:
        chunk.state, chunk.finished_at = ChunkState.CANCELED, now
        return f"job is {job.status}"
    if chunk.state == ChunkState.RUNNING:
        if chunk.worker != worker and chunk.heartbeat_at is not None and \
                (now - chunk.heartbeat_at).total_seconds() < heartbeat_timeout:
            return "chunk is running on another worker"
        record_death(session, job, chunk, max_attempts)
        if chunk.state in TERMINAL_CHUNK_STATES:
            return f"chunk {chunk.state} after its worker died"
    first = chunk.attempts == 0
    chunk.state, chunk.attempts, chunk.worker = ChunkState.RUNNING, chunk.attempts + 1, worker
    chunk.started_at = chunk.heartbeat_at = now
    if job.status == JobStatus.QUEUED:
        job.status, job.started_at = JobStatus.RUNNING, now
    job.heartbeat_at = now
    items = _unscored(session, job_id, chunk_no, first)
    version = session.get(ModelVersion, job.model_version_id)
    session.expunge(version)
    return ClaimedChunk(job_id, chunk_no, chunk.attempts, version, job.use_cache, items,
                        isolate=chunk.attempts > max_attempts, upload_folder=job.upload_folder)


def claim_next_fresh(session: Session, job_id: str, after: int, *, worker: str, heartbeat_timeout: float,
                     max_attempts: int) -> ClaimedChunk | None:
    """The job's next fresh chunk after `after` (pending|queued, never attempted) -> running, for a task that
    keeps its pipeline going across chunks; None when there is none or the job has ended. The broker's
    message for that chunk later finds it taken and is skipped. Locks as `claim` does."""
    candidates = session.scalars(select(Chunk.chunk_no).where(
        Chunk.job_id == job_id, Chunk.chunk_no > after, Chunk.state.in_(UNSENT_CHUNK_STATES),
        Chunk.attempts == 0).order_by(Chunk.chunk_no).limit(4)).all()
    for chunk_no in candidates:  # one may have been taken since the read above; claim checks under lock
        claimed = claim(session, job_id, chunk_no, worker=worker, heartbeat_timeout=heartbeat_timeout,
                        max_attempts=max_attempts)
        if not isinstance(claimed, str):
            return claimed
        if claimed.startswith("job is"):
            return None
    return None


def record_death(session: Session, job: Job, chunk: Chunk, max_attempts: int) -> None:
    """running(dead) -> running (the caller moves it on), or failed/done. The caller holds the job and
    chunk row locks. After an isolated attempt dies, its suspect item takes the blame; an item blamed
    POISON_DEATHS times in a row gets an error and the chunk goes on without it."""
    if chunk.attempts <= max_attempts:
        return  # an ordinary attempt: the next one retries every untried item
    suspect = chunk.suspect_item
    scored = suspect is not None and session.scalar(
        select(func.count()).select_from(Result).where(Result.job_id == job.id, Result.item_id == suspect))
    if suspect is None or scored:
        if not _unscored(session, job.id, chunk.chunk_no, False):
            _close(session, job, chunk, ChunkState.DONE, None)
            return
        if suspect is None:  # died before naming any item: nothing to isolate, so give the chunk up
            give_up(session, job, chunk, f"gave up after {chunk.attempts} attempts: the worker scoring this "
                                         "chunk died or stopped responding each time, before any item")
        return
    chunk.suspect_deaths += 1
    if chunk.suspect_deaths >= POISON_DEATHS:
        record_batch(session, job.id, [{
            "item_id": suspect, "status": "error",
            "error": f"the worker died {chunk.suspect_deaths} times while scoring this item alone "
                     "(a poison item: it crashes or hangs the process)"}], [])
        chunk.suspect_item, chunk.suspect_deaths = None, 0


def take_back(session: Session, job: Job, chunk: Chunk, max_attempts: int) -> bool:
    """delivered|running(dead) -> queued, for the sweeper to send again; False if the chunk ended instead.
    The caller holds the job and chunk row locks and has seen the chunk's heartbeat go stale."""
    if chunk.state == ChunkState.RUNNING:
        record_death(session, job, chunk, max_attempts)
    if chunk.state in TERMINAL_CHUNK_STATES:
        return False
    chunk.state, chunk.enqueued_at = ChunkState.QUEUED, None
    return True


def heartbeat(session: Session, job_id: str, chunk_no: int, attempt: int) -> bool:
    """Liveness of a running attempt, written from a thread at a fixed interval. False when the attempt
    no longer owns the chunk (it was presumed dead and taken back)."""
    now = utcnow()
    owned = session.execute(update(Chunk).where(*_owned(job_id, chunk_no, attempt))
                            .values(heartbeat_at=now)).rowcount
    if owned:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now))
    return bool(owned)


def name_suspect(session: Session, job_id: str, chunk_no: int, attempt: int, item_id: str) -> bool:
    """In isolation, before an item is scored alone: if this process dies now, this item is to blame.
    Naming a different item than last time restarts the count of deaths in a row. Fenced by the attempt."""
    deaths = case((Chunk.suspect_item == item_id, Chunk.suspect_deaths), else_=0)
    return bool(session.execute(update(Chunk).where(*_owned(job_id, chunk_no, attempt))
                                .values(suspect_deaths=deaths, suspect_item=item_id)).rowcount)


def record_batch(session: Session, job_id: str, results: list[dict], cache_rows: list[dict]) -> int:
    """Insert result rows (and score-cache rows); count only the rows that are new. Not fenced: a result
    is the same whichever attempt computes it, and the first one written wins. On PostgreSQL the rows
    travel as arrays in one statement that also grows the counters (see `_record_batch_postgres`)."""
    if not results and not cache_rows:
        return 0
    if is_postgres(session):
        return _record_batch_postgres(session, job_id, results, cache_rows)
    now = utcnow()
    for r in results:
        r.setdefault("job_id", job_id)
        r.setdefault("created_at", now)
        r.setdefault("from_cache", False)
        r.setdefault("outputs", None)
        r.setdefault("error", None)
        r.setdefault("content_hash", None)
    inserted = {row.item_id for row in
                insert_ignoring_conflicts(session, Result.__table__, results, ["job_id", "item_id"])}
    new = [r for r in results if r["item_id"] in inserted]
    for row in cache_rows:
        row.setdefault("created_at", now)
    insert_ignoring_conflicts(session, ScoreCache.__table__, cache_rows, ["content_hash", "model_version_id"])
    if new:
        session.execute(update(Job).where(Job.id == job_id).values(
            done_items=Job.done_items + len(new),
            failed_items=Job.failed_items + sum(r["status"] == "error" for r in new),
            cached_items=Job.cached_items + sum(bool(r["from_cache"]) for r in new)))
    return len(new)


# One statement text whatever the batch size: the driver parses it once and the server prepares it, where a
# multi-row VALUES list is a new query of 64 x 7 placeholders for the client to split on every batch.
_INSERT_RESULTS_PG = text("""
WITH new AS (
    INSERT INTO results (job_id, item_id, status, outputs, error, content_hash, from_cache, created_at)
    SELECT :job_id, t.item_id, t.status, t.outputs::json, t.error, t.content_hash, t.from_cache, :now
    FROM unnest(CAST(:item_ids AS text[]), CAST(:statuses AS text[]), CAST(:outputs AS text[]),
                CAST(:errors AS text[]), CAST(:hashes AS text[]), CAST(:from_cache AS boolean[]))
         AS t(item_id, status, outputs, error, content_hash, from_cache)
    ON CONFLICT (job_id, item_id) DO NOTHING
    RETURNING status, from_cache
), counted AS (
    SELECT count(*) AS done, count(*) FILTER (WHERE status = 'error') AS failed,
           count(*) FILTER (WHERE from_cache) AS cached FROM new
), grown AS (
    UPDATE jobs SET done_items = done_items + counted.done, failed_items = failed_items + counted.failed,
                    cached_items = cached_items + counted.cached
    FROM counted WHERE jobs.id = :job_id AND counted.done > 0
)
SELECT done FROM counted""")

_INSERT_CACHE_PG = text("""
INSERT INTO score_cache (content_hash, model_version_id, outputs, created_at)
SELECT t.content_hash, t.model_version_id, t.outputs::json, :now
FROM unnest(CAST(:hashes AS text[]), CAST(:version_ids AS integer[]), CAST(:outputs AS text[]))
     AS t(content_hash, model_version_id, outputs)
ON CONFLICT (content_hash, model_version_id) DO NOTHING""")


def _json_or_none(value) -> str | None:
    return None if value is None else json.dumps(value)


def _record_batch_postgres(session: Session, job_id: str, results: list[dict], cache_rows: list[dict]) -> int:
    now = utcnow()
    new = 0
    if results:
        new = session.execute(_INSERT_RESULTS_PG, {
            "job_id": job_id, "now": now,
            "item_ids": [r["item_id"] for r in results],
            "statuses": [r["status"] for r in results],
            "outputs": [_json_or_none(r.get("outputs")) for r in results],
            "errors": [r.get("error") for r in results],
            "hashes": [r.get("content_hash") for r in results],
            "from_cache": [bool(r.get("from_cache", False)) for r in results]}).scalar_one()
    if cache_rows:
        session.execute(_INSERT_CACHE_PG, {
            "now": now, "hashes": [c["content_hash"] for c in cache_rows],
            "version_ids": [c["model_version_id"] for c in cache_rows],
            "outputs": [json.dumps(c["outputs"]) for c in cache_rows]})
    return new


def finish(session: Session, job_id: str, chunk_no: int, attempt: int) -> bool:
    """running(attempt) -> done. Locks the job row, then updates the chunk only if the attempt still owns
    it; closes the job when it was its last open chunk. Returns whether the attempt still owned it."""
    job = lock_job(session, job_id)
    owned = session.execute(update(Chunk).where(*_owned(job_id, chunk_no, attempt))
                            .values(state=ChunkState.DONE, finished_at=utcnow(), error=None)).rowcount
    if job is not None:
        finalize_if_complete(session, job)
    return bool(owned)


def finalize_if_complete(session: Session, job: Job) -> bool:
    """running|queued -> succeeded once no chunk of a score or embed job is left to run (never a preparing job: its
    chunks do not exist yet). The caller holds the job lock."""
    if job.status not in OPEN_JOB_STATUSES or job.kind not in CHUNKED_JOB_KINDS:
        return False
    open_chunks = session.scalar(select(func.count()).select_from(Chunk).where(
        Chunk.job_id == job.id, Chunk.state.not_in(TERMINAL_CHUNK_STATES)))
    if open_chunks:
        return False
    job.status, job.finished_at = JobStatus.SUCCEEDED, utcnow()
    return True


def _close(session: Session, job: Job, chunk: Chunk, state: ChunkState, reason: str | None) -> None:
    chunk.state, chunk.finished_at, chunk.error = state, utcnow(), reason
    session.flush()
    finalize_if_complete(session, job)


def give_up(session: Session, job: Job, chunk: Chunk, reason: str) -> None:
    """any open state -> failed: every item of the chunk still without a result fails with `reason`.
    The caller holds the job and chunk row locks."""
    missing = [item_id for item_id, _ in _unscored(session, job.id, chunk.chunk_no, False)]
    record_batch(session, job.id,
                 [{"item_id": i, "status": "error", "error": reason} for i in missing], [])
    _close(session, job, chunk, ChunkState.FAILED, reason)


def release(session: Session, job_id: str, chunk_no: int, attempt: int, error: str) -> bool:
    """running(attempt) -> pending after an unexpected error, for the sweeper to send again (attempts stay
    counted). Fenced: a stale attempt cannot put back a chunk that a newer attempt is running."""
    return bool(session.execute(update(Chunk).where(*_owned(job_id, chunk_no, attempt))
                                .values(state=ChunkState.PENDING, enqueued_at=None, error=error[:2000])).rowcount)


def fail_job(session: Session, job_id: str, reason: str) -> None:
    """queued|running -> failed for the job and all its open chunks (e.g. its model cannot be loaded).
    Locks the job row."""
    job = lock_job(session, job_id)
    if job is None or job.status in FINAL_JOB_STATUSES:
        return
    session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.state.not_in(TERMINAL_CHUNK_STATES))
                    .values(state=ChunkState.FAILED, finished_at=utcnow(), error=reason))
    job.status, job.error, job.finished_at = JobStatus.FAILED, reason, utcnow()


def lookup_cache(session: Session, model_version_id: int, hashes: list[str]) -> dict[str, dict]:
    if not hashes:
        return {}
    rows = session.execute(select(ScoreCache.content_hash, ScoreCache.outputs).where(
        ScoreCache.model_version_id == model_version_id, ScoreCache.content_hash.in_(set(hashes))))
    return dict(rows.all())  # not dict(rows.tuples()): a Result has keys(), so dict() would index it by column
