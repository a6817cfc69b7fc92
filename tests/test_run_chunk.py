"""A chunk's task body with a real database and a model that is slow on purpose (no Celery)."""
import threading
import time
from dataclasses import replace

import numpy as np
from PIL import Image
from sqlalchemy import select

from shared import jobs
from shared.db import session_scope
from shared.imaging import Preprocessing
from shared.model_registry import set_alias, signature_of
from shared.tables import Chunk, ModelVersion, Result
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


def test_a_batch_slower_than_the_heartbeat_timeout_keeps_its_chunk(configured):
    settings = replace(configured, heartbeat_timeout=1.0, batch_size=4)
    for i in range(4):
        Image.new("RGB", (40, 30), (i * 40, 80, 120)).save(configured.data_roots[0] / f"{i}.png")
    with session_scope() as s:
        version = ModelVersion(name="slow", version=1, task="regression", input_height=32, input_width=32,
                               resize_mode="stretch", pixel_scale="unit", output_names=["pv"],
                               target_transform={"kind": "none"}, path="/nowhere", sha256="0" * 64, size_bytes=1)
        s.add(version)
        s.flush()
        set_alias(s, "slow", "production", 1)
        job_id = jobs.create_score_job(s, model_ref="slow", pieces=[[(f"i{i}", f"{i}.png") for i in range(4)]],
                                       source={"type": "items"}, use_cache=False, chunk_size=4).id
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
