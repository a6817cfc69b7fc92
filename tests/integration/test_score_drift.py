"""Drift on every score job: real score tasks (run_chunk, no Celery) on SQLite and PostgreSQL, with a stand-in
classifier that sorts images by brightness, against a training reference and against the previous job."""
import logging
from datetime import timedelta

import numpy as np
from PIL import Image

from shared.core.db import session_scope
from shared.core.tables import Chunk, ModelVersion
from shared.images.imaging import Preprocessing
from shared.models import drift as drift_stats
from shared.models.outputs import interpret
from shared.services import drift, jobs
from shared.services.model_registry import set_alias, signature_of
from worker import chunk_lifecycle
from worker.model_cache import ModelCache
from worker.run_chunk import run_chunk
from worker.sweeper import sweep

CLASSES = ["dark", "mid", "bright"]


def brightness_probabilities(means: np.ndarray) -> np.ndarray:
    """What the stand-in classifier says for images of these mean pixel values (0..1)."""
    centres = np.array([1 / 6, 1 / 2, 5 / 6])
    logits = -((means[:, None] - centres) ** 2) * 60
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class BrightnessModel:
    def __init__(self, version):
        self.version_id = version.id
        self.signature = signature_of(version)
        self.preprocessing = Preprocessing(height=16, width=16, pixel_scale="unit")

    def predict(self, batch):  # uint8 pixels, as the real model cache takes them
        return brightness_probabilities(np.asarray(batch, dtype=np.float64).mean(axis=(1, 2, 3)) / 255.0)


def _version() -> int:
    with session_scope() as s:
        version = ModelVersion(name="shades", version=1, task="classification", input_height=16, input_width=16,
                               resize_mode="stretch", pixel_scale="unit", class_names=CLASSES,
                               target_transform={"kind": "none"}, path="/nowhere", sha256="0" * 64, size_bytes=1)
        s.add(version)
        s.flush()
        set_alias(s, "shades", "production", 1)
        return version.id


def _score(configured, name: str, greys) -> str:
    """A score job of one PNG per grey level in two chunks, run to the end; the second task finds nothing to do."""
    for i, grey in enumerate(greys):
        Image.new("RGB", (20, 20), (int(grey),) * 3).save(configured.data_roots[0] / f"{name}{i}.png")
    with session_scope() as s:
        job_id = jobs.create_score_job(s, model_ref="shades", source={"type": "items"}, use_cache=False,
                                       pieces=[[(f"{name}{i}", f"{name}{i}.png") for i in range(len(greys))]],
                                       chunk_size=(len(greys) + 1) // 2).id
    models = ModelCache(1, loader=BrightnessModel)
    assert run_chunk(job_id, 0, worker="w", models=models, settings=configured) == "done"  # chains into chunk 1
    assert run_chunk(job_id, 1, worker="w", models=models, settings=configured) == "chunk already done"
    return job_id


def _job_drift(job_id: str) -> dict:
    with session_scope() as s:
        described = jobs.job_json(s, jobs.get_job(s, job_id))
    assert described["status"] == "succeeded"
    return described["drift"]


def test_a_score_job_unlike_the_training_data_drifts_above_the_threshold_and_a_like_one_stays_below(
        configured, caplog):
    rng = np.random.default_rng(0)
    version_id = _version()
    training_greys = rng.integers(0, 256, 600)  # the reference: what the model says on data like its training data
    rows = interpret("classification", brightness_probabilities(training_greys / 255.0), output_names=None,
                     class_names=CLASSES, target_transform={"kind": "none"})
    with session_scope() as s:
        assert drift.record_reference(s, version_id, drift_stats.summarize("classification", rows))

    caplog.set_level(logging.INFO, logger="shared.services.drift")
    like = _job_drift(_score(configured, "like", rng.integers(0, 256, 200)))
    assert like["reference"] == "training" and like["statistic"] == "psi" and like["items"] == 200
    assert like["value"] < configured.drift_threshold and like["exceeded"] is False
    assert set(like["outputs"]["label"]) == set(CLASSES)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    unlike = _job_drift(_score(configured, "unlike", rng.integers(230, 256, 200)))  # washed-out photos
    assert unlike["value"] > configured.drift_threshold and unlike["exceeded"] is True
    assert unlike["threshold"] == configured.drift_threshold == 0.2
    assert unlike["outputs"]["label"]["bright"]["share"] > 0.9
    assert unlike["distribution"]["labels"]["bright"] > 0.9
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "above the threshold" in warnings[0]
    with session_scope() as s:
        assert drift.latest_by_model(s) == [("shades", unlike["value"])]  # what /metrics exports


def test_a_version_without_a_training_reference_is_compared_with_its_previous_score_job(configured):
    rng = np.random.default_rng(1)
    _version()
    first = _job_drift(_score(configured, "first", rng.integers(0, 256, 120)))
    assert first["reference"] is None and first["value"] is None and first["exceeded"] is False
    assert first["distribution"]["count"] == 120
    first_id = first_id_of("first")
    second = _job_drift(_score(configured, "second", rng.integers(0, 40, 120)))  # all dark now
    assert second["reference"] == "previous_job" and second["reference_job_id"] == first_id
    assert second["value"] > 1 and second["exceeded"] is True
    assert drift.record_job_drift(first_id, 0.2) is None  # recorded once: a second task finds it done


def first_id_of(item_prefix: str) -> str:
    with session_scope() as s:
        from sqlalchemy import select

        from shared.core.tables import JobItem
        return s.scalar(select(JobItem.job_id).where(JobItem.item_id == f"{item_prefix}0"))


def _die(job_id: str, chunk_no: int) -> None:
    """The worker running the chunk died: its heartbeat is long stale."""
    with session_scope() as s:
        chunk = s.get(Chunk, (job_id, chunk_no))
        chunk.heartbeat_at -= timedelta(hours=1)


def _half_given_up(configured, name: str, greys) -> str:
    """A score job of two chunks: the first scored for real; the second's worker dies on every attempt, isolated
    too, before it scores any item (chunk_lifecycle.record_death then gives it up)."""
    for i, grey in enumerate(greys):
        Image.new("RGB", (20, 20), (int(grey),) * 3).save(configured.data_roots[0] / f"{name}{i}.png")
    with session_scope() as s:
        job_id = jobs.create_score_job(s, model_ref="shades", source={"type": "items"}, use_cache=False,
                                       pieces=[[(f"{name}{i}", f"{name}{i}.png") for i in range(len(greys))]],
                                       chunk_size=len(greys) // 2).id
    for _ in range(configured.max_attempts + 1):  # attempted before chunk 0 runs: no task chains into it
        with session_scope() as s:
            claimed = chunk_lifecycle.claim(s, job_id, 1, worker="doomed", heartbeat_timeout=60,
                                            max_attempts=configured.max_attempts)
        assert not isinstance(claimed, str), claimed
        _die(job_id, 1)
    assert run_chunk(job_id, 0, worker="w", models=ModelCache(1, loader=BrightnessModel), settings=configured) == \
        "done"
    return job_id


def test_a_score_job_closed_by_giving_up_its_last_chunk_records_the_drift_of_the_items_scored(configured):
    """Given up by the sweeper (it finds the dead worker) and at a worker's claim (the next delivery finds it):
    either way the job's outputs distribution and drift are recorded, from the items that were scored."""
    rng = np.random.default_rng(2)
    _version()
    reference = _job_drift(_score(configured, "ref", rng.integers(0, 256, 100)))
    assert reference["items"] == 100

    swept = _half_given_up(configured, "swept", rng.integers(230, 256, 80))  # washed-out photos
    stats = sweep(configured, lambda job_id, nos: len(nos))
    assert stats["given_up"] == 1
    described = _job_drift(swept)
    assert described["items"] == 40 and described["reference"] == "previous_job"
    assert described["exceeded"] is True and described["distribution"]["labels"]["bright"] == 1.0
    with session_scope() as s:
        job = jobs.get_job(s, swept)
        assert (job.done_items, job.failed_items) == (80, 40)

    claimed_late = _half_given_up(configured, "late", rng.integers(0, 256, 60))
    models = ModelCache(1, loader=BrightnessModel)
    assert run_chunk(claimed_late, 1, worker="w", models=models, settings=configured) == \
        "chunk failed after its worker died"
    with session_scope() as s:  # the claim closed the job a while ago; the worker recorded no drift
        job = jobs.get_job(s, claimed_late)
        job.finished_at -= timedelta(minutes=1)
    sweep(configured, lambda job_id, nos: len(nos))
    late = _job_drift(claimed_late)
    assert late["items"] == 30 and late["value"] is not None
