"""A chunk's task body with a real database and a model that is slow on purpose (no Celery)."""
import threading
import time
from dataclasses import replace

import numpy as np
from PIL import Image
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Chunk, ModelVersion, Result, utcnow
from shared.images.imaging import Preprocessing
from shared.services import jobs
from shared.services.model_registry import set_alias, signature_of
from worker.model_cache import ModelCache
from worker.run_chunk import run_chunk


class SlowModel:
    """Predicts constant page views, taking `seconds` per batch: a batch of huge PNGs on a busy CPU."""

    def __init__(self, version, seconds):
        self.version_id, self.seconds = version.id, seconds
        self.signature = signature_of(version)
        self.preprocessing = Preprocessing(height=32, width=32)

    def predict(self, batch):
        time.sleep(self.seconds)
        return np.zeros((len(batch), 1), dtype=np.float32)


def _slow_job(configured, items: int, chunk_size: int) -> str:
    """A score job of `items` small PNGs for a model named "slow" that no file backs (the test's loader fakes it)."""
    for i in range(items):
        Image.new("RGB", (40, 30), (i % 250, 80, 120)).save(configured.data_roots[0] / f"c{i}.png")
    with session_scope() as s:
        version = ModelVersion(name="slow", version=1, task="regression", input_height=32, input_width=32,
                               resize_mode="stretch", pixel_scale="unit", output_names=["pv"],
                               target_transform={"kind": "none"}, path="/nowhere", sha256="0" * 64, size_bytes=1)
        s.add(version)
        s.flush()
        set_alias(s, "slow", "production", 1)
        return jobs.create_score_job(s, model_ref="slow", pieces=[[(f"i{i}", f"c{i}.png") for i in range(items)]],
                                     source={"type": "items"}, use_cache=False, chunk_size=chunk_size).id


def test_a_batch_slower_than_the_heartbeat_timeout_keeps_its_chunk(configured):
    settings = replace(configured, heartbeat_timeout=1.0, batch_size=4)
    job_id = _slow_job(configured, items=4, chunk_size=4)
    beats = []

    def watch():
        with session_scope() as s:
            beats.append(s.scalar(select(Chunk.heartbeat_at).where(Chunk.job_id == job_id)))

    models = ModelCache(1, loader=lambda v: SlowModel(v, seconds=3.0))
    stop = threading.Event()
    watcher = threading.Thread(target=lambda: [watch() for _ in iter(lambda: stop.wait(0.5), True)])
    watcher.start()
    try:
        assert run_chunk(job_id, 0, worker="w", models=models, settings=settings) == "done"
    finally:
        stop.set()
        watcher.join()
    seen = sorted({b for b in beats if b is not None})
    assert len(seen) >= 4, "the heartbeat did not move while the batch ran"
    assert max((b - a).total_seconds() for a, b in zip(seen, seen[1:])) < settings.heartbeat_timeout
    with session_scope() as s:
        chunk = s.scalar(select(Chunk).where(Chunk.job_id == job_id))
        assert (chunk.state, chunk.attempts) == ("done", 1)
        assert len(list(s.scalars(select(Result).where(Result.job_id == job_id)))) == 4




def _chunk_states(job_id):
    with session_scope() as s:
        return [(c.state, c.attempts, c.worker) for c in
                s.scalars(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.chunk_no))]


def test_one_task_scores_the_jobs_next_fresh_chunks_through_one_pipeline(configured):
    settings = replace(configured, batch_size=3, chain_seconds=60.0)
    job_id = _slow_job(configured, items=10, chunk_size=4)
    models = ModelCache(1, loader=lambda v: SlowModel(v, seconds=0.0))
    with session_scope() as s:  # another worker runs chunk 1 right now: the chain must leave it alone
        chunk = s.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == 1))
        chunk.state, chunk.attempts, chunk.worker, chunk.heartbeat_at = "running", 1, "other", utcnow()
    assert run_chunk(job_id, 0, worker="w", models=models, settings=settings) == "done"
    assert _chunk_states(job_id) == [("done", 1, "w"), ("running", 1, "other"), ("done", 1, "w")]
    with session_scope() as s:
        job = jobs.get_job(s, job_id)
        assert (job.done_items, job.failed_items, job.status) == (6, 0, "running")
        written = sorted(s.scalars(select(Result.item_id).where(Result.job_id == job_id)))
    assert written == sorted(f"i{i}" for i in (0, 1, 2, 3, 8, 9))
    # the broker's message for chunk 2 arrives later: the chunk is done, nothing is scored twice
    assert run_chunk(job_id, 2, worker="w", models=models, settings=settings) == "chunk already done"


def test_without_chaining_a_task_scores_only_its_own_chunk(configured):
    settings = replace(configured, batch_size=3, chain_seconds=0.0)
    job_id = _slow_job(configured, items=10, chunk_size=4)
    models = ModelCache(1, loader=lambda v: SlowModel(v, seconds=0.0))
    assert run_chunk(job_id, 1, worker="w", models=models, settings=settings) == "done"
    assert [state for state, _, _ in _chunk_states(job_id)] == ["pending", "done", "pending"]
    for no in (0, 2):
        assert run_chunk(job_id, no, worker="w", models=models, settings=settings) == "done"
    with session_scope() as s:
        job = jobs.get_job(s, job_id)
        assert (job.done_items, job.status) == (10, "succeeded")


def test_a_chain_stops_at_a_canceled_job_and_keeps_what_it_wrote(configured):
    settings = replace(configured, batch_size=2, chain_seconds=60.0)
    job_id = _slow_job(configured, items=12, chunk_size=4)
    canceled = threading.Event()

    class CancelingModel(SlowModel):
        def predict(self, batch):
            if not canceled.is_set():
                canceled.set()
                with session_scope() as s:
                    jobs.cancel_job(s, job_id)
            return super().predict(batch)

    models = ModelCache(1, loader=lambda v: CancelingModel(v, seconds=0.0))
    assert run_chunk(job_id, 0, worker="w", models=models, settings=settings) == "done"
    states = [state for state, _, _ in _chunk_states(job_id)]
    assert states[0] == "done" and "running" not in states
    with session_scope() as s:
        job = jobs.get_job(s, job_id)
        assert job.status == "canceled"
        assert job.done_items == s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
