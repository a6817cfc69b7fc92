"""An embed job's writes: each batch's results (as scoring writes them, chunk_lifecycle.record_batch) and the
catalog's vectors (`embeddings`), the vectors a cache lookup reuses, and the job's dimension once known.

Invariants:
- Results and counters are scoring's: a result is inserted once per (job, item) and counters grow only by the rows
  really inserted, so a chunk delivered twice writes and counts once.
- One vector per (catalog, space, item): an ok result upserts it, its category and uri read from the job's item.
  The job created last wins: a row written by a later-created job is never overwritten by an earlier one (a late
  attempt of an old job cannot bring back an old image), and a row the same job wrote already is left as it is (a
  retried chunk changes nothing, not even `created_at`, which index deltas read). A newer job's write replaces the
  vector and clears `deleted_at`.
- On PostgreSQL a batch costs two statements, one per table, the rows travelling as arrays (as record_batch).
- The cache: an item whose content hash already has a vector in the same space, in any catalog and also when that
  item was deleted since (the vector depends only on the image and the space), gets that vector copied.
"""
from __future__ import annotations

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, aliased

from shared.core.db import is_postgres
from shared.core.tables import Embedding, Job, JobItem, utcnow
from worker.chunk_lifecycle import record_batch

_UPSERT_PG = text("""
INSERT INTO embeddings (catalog, space, item_id, category, uri, content_hash, dim, vector, job_id, created_at,
                        deleted_at)
SELECT :catalog, :space, t.item_id, ji.category, ji.uri, t.content_hash, t.dim, t.vector, :job_id, :now, NULL
FROM unnest(CAST(:item_ids AS text[]), CAST(:hashes AS text[]), CAST(:dims AS integer[]),
            CAST(:vectors AS bytea[])) AS t(item_id, content_hash, dim, vector)
JOIN job_items ji ON ji.job_id = :job_id AND ji.item_id = t.item_id
ON CONFLICT (catalog, space, item_id) DO UPDATE SET
    category = EXCLUDED.category, uri = EXCLUDED.uri, content_hash = EXCLUDED.content_hash, dim = EXCLUDED.dim,
    vector = EXCLUDED.vector, job_id = EXCLUDED.job_id, created_at = EXCLUDED.created_at, deleted_at = NULL
WHERE embeddings.job_id IS DISTINCT FROM EXCLUDED.job_id
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = embeddings.job_id
                  AND j.created_at > (SELECT created_at FROM jobs WHERE id = :job_id))""")


def record_embedded_batch(session: Session, job_id: str, spec: dict, results: list[dict]) -> int:
    """Write one batch of an embed job: results (without their vectors) and counters, then the ok items' vectors.
    Returns how many results were new."""
    new = record_batch(session, job_id, [{k: v for k, v in r.items() if k != "vector"} for r in results], [])
    vectors = [r for r in results if r["status"] == "ok"]
    if vectors:
        (_upsert_postgres if is_postgres(session) else _upsert_sqlite)(session, job_id, spec, vectors)
    return new


def _upsert_postgres(session: Session, job_id: str, spec: dict, rows: list[dict]) -> None:
    session.execute(_UPSERT_PG, {
        "catalog": spec["catalog"], "space": spec["space"], "job_id": job_id, "now": utcnow(),
        "item_ids": [r["item_id"] for r in rows], "hashes": [r.get("content_hash") for r in rows],
        "dims": [r["outputs"]["dim"] for r in rows], "vectors": [r["vector"] for r in rows]})


def _upsert_sqlite(session: Session, job_id: str, spec: dict, rows: list[dict]) -> None:
    """The same upsert in plain steps: SQLite's transaction holds the database's write lock from its start
    (shared/core/db.py), so nothing changes between the reads and the write."""
    from sqlalchemy.dialects.sqlite import insert

    ids = [r["item_id"] for r in rows]
    items = {item_id: (category, uri) for item_id, category, uri in session.execute(
        select(JobItem.item_id, JobItem.category, JobItem.uri).where(JobItem.job_id == job_id,
                                                                     JobItem.item_id.in_(ids)))}
    this_job, writer = aliased(Job), aliased(Job)
    kept = set(session.scalars(select(Embedding.item_id).join(writer, writer.id == Embedding.job_id).where(
        Embedding.catalog == spec["catalog"], Embedding.space == spec["space"], Embedding.item_id.in_(ids),
        writer.created_at > select(this_job.created_at).where(this_job.id == job_id).scalar_subquery())))
    now = utcnow()
    values = [{"catalog": spec["catalog"], "space": spec["space"], "item_id": r["item_id"],
               "category": items[r["item_id"]][0], "uri": items[r["item_id"]][1], "content_hash": r.get("content_hash"),
               "dim": r["outputs"]["dim"], "vector": r["vector"], "job_id": job_id, "created_at": now,
               "deleted_at": None} for r in rows if r["item_id"] in items and r["item_id"] not in kept]
    if not values:
        return
    stmt = insert(Embedding.__table__)
    stmt = stmt.on_conflict_do_update(
        index_elements=["catalog", "space", "item_id"],
        set_={column: stmt.excluded[column] for column in ("category", "uri", "content_hash", "dim", "vector",
                                                            "job_id", "created_at", "deleted_at")},
        where=Embedding.__table__.c.job_id.is_distinct_from(stmt.excluded.job_id))
    session.execute(stmt, values)


def lookup_vectors(session: Session, space: str, hashes: list[str]) -> dict[str, bytes]:
    """Stored vectors of the space by content hash (any catalog; see the module docstring)."""
    if not hashes:
        return {}
    rows = session.execute(select(Embedding.content_hash, Embedding.vector).where(
        Embedding.space == space, Embedding.content_hash.in_(set(hashes))))
    return {digest: bytes(vector) for digest, vector in rows}


def record_dim(session: Session, job_id: str, spec: dict, dim: int) -> None:
    """Note the width of the job's vectors in its spec, once a worker has built the embedder."""
    if (spec or {}).get("dim") != dim:
        session.execute(update(Job).where(Job.id == job_id).values(spec={**(spec or {}), "dim": dim}))
