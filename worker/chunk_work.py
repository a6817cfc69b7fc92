"""What a chunk runs, by its job's kind: the one place where score and embed chunks differ. worker/run_chunk.py
runs either through the same pipeline (worker/scoring.score_items) with what `prepare` gives it.

- score: the LoadedModel, scoring's outputs (the default), the score cache, chunk_lifecycle.record_batch;
- embed: the model's embedder for the job's layer (kept with the model, worker/model_cache.py), vectors
  (worker/embedding.VectorOutputs), the space's stored vectors as the cache and worker/embedding_store.py's writes.
Building the model or the embedder may fail (a missing file, a layer the model lacks): `prepare` raises
`ModelUnusable` with the reason the job fails with.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from shared.core.db import session_scope
from shared.core.errors import ObjectStoreUnavailable
from shared.core.states import JobKind
from worker import chunk_lifecycle, embedding_store
from worker.chunk_lifecycle import JobModel
from worker.embedding import VectorOutputs
from worker.model_cache import ModelCache


class ModelUnusable(Exception):
    """The job cannot run with its model: the message is the job's failure reason."""


@dataclass
class ChunkWork:
    model: object  # what predicts: a LoadedModel, or an Embedder
    outputs: object | None  # what score_items makes of its rows (None: scoring's)
    lookup: Callable[[Session, list[str]], dict]  # (session, content hashes) -> cached values by hash
    record: Callable[[Session, list[dict], list[dict]], int]  # (session, results, cache rows) -> new results


def prepare(job_id: str, job: JobModel, models: ModelCache) -> ChunkWork:
    version = job.version
    try:
        loaded = models.get(version)
    except ObjectStoreUnavailable:
        raise  # the store's outage, not the model's fault: the task goes back to the queue (worker/tasks.py)
    except Exception as exc:
        raise ModelUnusable(f"cannot load model {version.name}@{version.version}: {exc}") from exc
    if job.kind != JobKind.EMBED:
        return ChunkWork(loaded, None, lambda session, hashes: chunk_lifecycle.lookup_cache(session, version.id,
                                                                                            hashes),
                         lambda session, results, rows: chunk_lifecycle.record_batch(session, job_id, results, rows))
    spec = job.spec or {}
    try:
        embedder = loaded.embedder(spec.get("layer"))
    except Exception as exc:
        raise ModelUnusable(f"cannot embed with {version.name}@{version.version}: {exc}") from exc
    if spec.get("dim") != embedder.dim:
        with session_scope() as session:
            embedding_store.record_dim(session, job_id, spec, embedder.dim)
    return ChunkWork(embedder, VectorOutputs(spec.get("normalize", True)),
                     lambda session, hashes: embedding_store.lookup_vectors(session, spec["space"], hashes),
                     lambda session, results, _: embedding_store.record_embedded_batch(session, job_id, spec, results))
