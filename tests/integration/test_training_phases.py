"""The training process's phases one at a time (worker.training.run, attempt, fitting, comparison, registration):
no servers, except the heartbeat's answers, checked on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shared.core.config import load_settings
from shared.core.db import session_scope
from shared.images.imaging import Preprocessing
from shared.schemas.training import TrainRequest
from worker.training import attempt as training_attempt
from worker.training import comparison, registration, run
from worker.training.data import Split, TrainingData

keras = pytest.importorskip("keras")
from worker.training import fitting  # noqa: E402  (imports Keras)


def request(**over) -> TrainRequest:
    body = {"model": "views", "task": "regression", "input_size": 16, "epochs": 5, "batch_size": 4,
            "dataset": {"path": "items.csv", "id_column": "id", "target_columns": ["views"]},
            "base": {"architecture": "vgg", "width": 4}}
    body.update(over)
    return TrainRequest.model_validate(body)


def fine_tune(**over) -> TrainRequest:
    return request(base={"version": "views@1"}, input_size=None, **over)


def split(n: int, size: int = 16, seed: int = 0, prefix: str = "i") -> Split:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    raw = x.mean(axis=(1, 2, 3))[:, None].astype(np.float64)
    return Split(ids=[f"{prefix}{seed}-{i}" for i in range(n)], x=x, y=raw.astype(np.float32), geometries=[None] * n,
                 raw_targets=raw)


def regression_data(n_train=12, n_validation=4, n_holdout=4) -> TrainingData:
    return TrainingData(splits={"train": split(n_train, seed=1), "validation": split(n_validation, seed=2),
                                "holdout": split(n_holdout, seed=3)},
                        class_names=None, target_transform={"kind": "none"}, output_names=["views"])


# --------------------------------------------------------------------------------------------- the fit plan


def test_a_new_model_without_learned_weights_fits_in_one_phase_at_the_full_rate():
    head, rest = fitting.plan_phases(request(freeze={"head_epochs": 2}), learned_weights=False)
    assert head.until == 0
    assert (rest.until, rest.learning_rate, rest.backbone_trainable) == (5, 1e-3, True)


def test_a_fine_tune_fits_the_head_alone_first_then_everything_at_a_lower_rate():
    req = fine_tune(freeze={"head_epochs": 2, "fine_tune_lr_factor": 0.1, "unfreeze_top": 3})
    head, rest = fitting.plan_phases(req, learned_weights=True)
    assert (head.until, head.learning_rate, head.backbone_trainable) == (2, 1e-3, False)
    assert (rest.until, rest.backbone_trainable, rest.unfreeze_top) == (5, True, 3)
    assert rest.learning_rate == pytest.approx(1e-4)
    assert fitting.plan_phases(fine_tune(freeze={"head_epochs": 9}), learned_weights=True)[0].until == 5


class FitLog:
    """A stand-in model that remembers its fits, and the compilations fitting.fit asked for."""

    def __init__(self):
        self.calls: list[tuple] = []

    def fit(self, *_, epochs, initial_epoch, **__):
        self.calls.append(("fit", initial_epoch, epochs))


@pytest.fixture
def fit_log(monkeypatch):
    log = FitLog()
    monkeypatch.setattr(fitting, "compile_for_phase",
                        lambda model, req, phase, *, steps, epochs: log.calls.append(("compile", phase.until, epochs)))
    return log


def run_fit(log: FitLog, start_epoch: int) -> int:
    checks = []
    phases = [fitting.FitPhase(2, 1e-3, False), fitting.FitPhase(5, 1e-4, True)]
    fitting.fit(log, request(), phases, (lambda start, until: None, None), [], steps=3, start_epoch=start_epoch,
                between_phases=lambda: checks.append(len(log.calls)))
    return len(checks)


def test_a_fresh_model_is_compiled_for_each_phase_it_fits(fit_log):
    assert run_fit(fit_log, start_epoch=0) == 2
    assert fit_log.calls == [("compile", 2, 2), ("fit", 0, 2), ("compile", 5, 3), ("fit", 2, 5)]


def test_a_model_resumed_in_its_first_phase_goes_on_as_compiled_then_compiles_the_next(fit_log):
    run_fit(fit_log, start_epoch=1)
    assert fit_log.calls == [("fit", 1, 2), ("compile", 5, 3), ("fit", 2, 5)]


def test_a_model_resumed_after_the_first_phase_skips_it_and_keeps_its_optimizer(fit_log):
    assert run_fit(fit_log, start_epoch=3) == 2  # the checks still run after each phase
    assert fit_log.calls == [("fit", 3, 5)]


# --------------------------------------------------------------------------------------------- the recorder


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SavingModel:
    stop_training = False

    def save(self, path):
        Path(path).write_bytes(b"model")


def recorder(tmp_path, clock=None, steps=10, epochs=4):
    heartbeat = training_attempt.AttemptHeartbeat("job-1", interval=60, attempt=2)  # never started: no database
    rows = []
    rec = fitting.EpochRecorder(tmp_path, heartbeat, lambda *row: rows.append(row), steps=steps, epochs=epochs,
                                clock=clock or Clock())
    rec.set_model(SavingModel())
    return rec, heartbeat, rows


@pytest.mark.parametrize("told", ["canceled", "superseded"])
def test_the_recorder_stops_training_at_the_next_batch_once_told(tmp_path, told):
    rec, heartbeat, _ = recorder(tmp_path)
    rec.on_train_batch_end(0)
    assert not rec.model.stop_training
    getattr(heartbeat, told).set()
    rec.on_train_batch_end(1)
    assert rec.model.stop_training


def test_the_recorder_writes_the_checkpoint_then_the_epoch_row_and_keeps_only_the_newest_file(tmp_path):
    clock = Clock()
    rec, heartbeat, rows = recorder(tmp_path, clock)
    for epoch in range(2):
        rec.on_epoch_begin(epoch)
        clock.now += 3.0
        rec.on_epoch_end(epoch, {"loss": np.float32(0.5), "val_loss": 0.75, "per_class": [1, 2]})
    assert [(n, metrics, seconds, path.name) for n, metrics, seconds, path in rows] == [
        (1, {"loss": 0.5, "val_loss": 0.75}, 3.0, "epoch-0001.keras"),
        (2, {"loss": 0.5, "val_loss": 0.75}, 3.0, "epoch-0002.keras")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.keras"]  # no temporary file either
    assert (heartbeat.progress["epoch"], heartbeat.progress["step"], rec.train_seconds) == (2, 0, 6.0)


def test_a_superseded_recorder_saves_its_checkpoint_but_records_nothing(tmp_path):
    rec, heartbeat, rows = recorder(tmp_path)
    rec.on_epoch_end(0, {"loss": 1.0})
    heartbeat.superseded.set()
    rec.on_epoch_end(1, {"loss": 0.9})
    assert [row[0] for row in rows] == [1]
    assert heartbeat.progress["epoch"] == 1
    assert (tmp_path / "epoch-0002.keras").is_file()  # its own folder: the live attempt's files are elsewhere


def test_the_recorder_reports_step_and_time_left_at_most_once_a_second(tmp_path):
    clock = Clock()
    rec, heartbeat, _ = recorder(tmp_path, clock, steps=10, epochs=4)
    heartbeat.progress["epoch"] = 1  # one epoch done
    rec.on_epoch_begin(1)
    clock.now += 0.5
    rec.on_train_batch_end(0)
    assert "step" not in heartbeat.progress
    clock.now += 1.5  # 2 s for 4 steps
    rec.on_train_batch_end(3)
    assert heartbeat.progress["step"] == 4
    assert heartbeat.progress["eta_seconds"] == pytest.approx(0.5 * (3 * 10 - 4))


# --------------------------------------------------------------------------------------------- the heartbeat


def test_what_the_heartbeat_hears_becomes_canceled_or_superseded():
    heartbeat = training_attempt.AttemptHeartbeat("job-1", interval=60, attempt=1)
    heartbeat.heard("running")
    training_attempt.stop_if_told(heartbeat)  # nothing to stop for
    heartbeat.heard("canceled")
    with pytest.raises(training_attempt.Canceled):
        training_attempt.stop_if_told(heartbeat)
    heartbeat.heard(training_attempt.lifecycle.SUPERSEDED)
    with pytest.raises(training_attempt.Superseded):  # superseded wins: a canceled run is no longer ours to mark
        training_attempt.stop_if_told(heartbeat)


def new_run(url) -> tuple[str, int]:
    from shared.services.train_jobs import create_train_job
    from worker.training import lifecycle

    with session_scope(url) as session:
        job_id = create_train_job(session, request(model="digits")).id
    with session_scope(url) as session:
        return job_id, lifecycle.claim(session, job_id, worker="w1", heartbeat_timeout=60, max_attempts=3).attempts


def test_a_heartbeat_records_progress_and_learns_of_cancellation(configured):
    from shared.core.tables import TrainRun
    from shared.services.jobs import cancel_job

    job_id, attempt = new_run(configured.database_url)
    heartbeat = training_attempt.start_heartbeat(job_id, attempt, 60, phase="loading data", epoch=0)
    try:
        with session_scope() as session:
            assert session.get(TrainRun, job_id).phase == "loading data"
        training_attempt.report(heartbeat, phase="training", steps_per_epoch=7)
        with session_scope() as session:
            assert (session.get(TrainRun, job_id).phase, session.get(TrainRun, job_id).steps_per_epoch) == \
                ("training", 7)
        assert not heartbeat.canceled.is_set()
        with session_scope() as session:
            cancel_job(session, job_id)
        heartbeat.beat()
        assert heartbeat.canceled.is_set() and not heartbeat.superseded.is_set()
    finally:
        heartbeat.stop()


def test_a_heartbeat_of_an_attempt_presumed_dead_learns_it_was_superseded_and_writes_nothing(configured):
    from shared.core.tables import Job, TrainRun, utcnow
    from worker.training import lifecycle

    job_id, first = new_run(configured.database_url)
    with session_scope() as session:
        job = session.get(Job, job_id)
        job.heartbeat_at = job.heartbeat_at - timedelta(seconds=600)
    with session_scope() as session:
        assert lifecycle.take_back(session, job_id, utcnow() - timedelta(seconds=60))
        lifecycle.claim(session, job_id, worker="w2", heartbeat_timeout=60, max_attempts=3)
    stale = training_attempt.AttemptHeartbeat(job_id, interval=60, attempt=first)
    stale.progress.update(phase="training", epoch=3)
    stale.beat()
    assert stale.superseded.is_set()
    assert not training_attempt.owned(job_id, first) and training_attempt.owned(job_id, first + 1)
    with session_scope() as session:
        assert session.get(TrainRun, job_id).epoch == 0


# --------------------------------------------------------------------------------------------- data


def test_a_fine_tune_keeps_its_parents_preprocessing_and_a_new_model_takes_the_requests():
    parent = SimpleNamespace(input_height=40, input_width=30, resize_mode="letterbox", pixel_scale="unit")
    assert run.preprocessing_for(fine_tune(), parent) == Preprocessing(40, 30, resize_mode="letterbox",
                                                                          pixel_scale="unit")
    assert run.preprocessing_for(request(), None) == Preprocessing(16, 16, resize_mode="stretch", pixel_scale="raw")
    keypoints = request(task="keypoints", dataset={"path": "p.csv", "target_columns": ["x", "y"]},
                        pixel_scale="symmetric")
    assert run.preprocessing_for(keypoints, None) == Preprocessing(16, 16, resize_mode="letterbox",
                                                                   pixel_scale="symmetric")


def test_load_data_splits_decodes_through_the_cache_and_transforms_the_targets(tmp_path):
    data_root = tmp_path / "data"
    data_root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(data_root / f"{i}.png")
        rows.append({"id": f"item-{i}", "image": f"{i}.png", "views": float(10 * i)})
    pd.DataFrame(rows).to_csv(data_root / "items.csv", index=False)
    settings = load_settings({"IMGQ_HOME": str(tmp_path / "home"), "IMGQ_DATA_ROOTS": str(data_root),
                              "IMGQ_DECODE_THREADS": "2"})
    req = request(target_transform="log1p", splits={"validation": 0.25, "holdout": 0.25})

    (tmp_path / "pixels-1").mkdir()
    (tmp_path / "pixels-2").mkdir()
    prep, data = run.load_data(req, None, settings, tmp_path / "pixels-1")
    sizes = data.stats["split_sizes"]
    assert sum(sizes.values()) == 40 and all(sizes.values())
    assert (data.stats["cache_misses"], data.stats["cache_hits"]) == (40, 0)
    train = data.splits["train"]
    assert train.x.dtype == np.uint8 and train.x.shape[1:] == (16, 16, 3)
    assert np.allclose(train.y, np.log1p(train.raw_targets))
    assert data.target_transform == {"kind": "log1p"} and data.output_names == ["views"]
    _, again = run.load_data(req, None, settings, tmp_path / "pixels-2")
    assert (again.stats["cache_misses"], again.stats["cache_hits"]) == (0, 40)
    assert again.splits["holdout"].ids == data.splits["holdout"].ids  # a fixed holdout


def test_make_dataset_scales_uint8_pixels_per_batch_and_shuffles_the_same_way_for_the_same_seed():
    x = np.full((5, 2, 2, 3), 255, np.uint8)
    x[:, 0, 0, 0] = np.arange(5)
    y = np.arange(5, dtype=np.float32)
    batches = list(fitting.make_dataset(x, y, 2, pixel_scale="symmetric", seed=0, shuffle=False))
    assert [len(b[1]) for b in batches] == [2, 2, 1]
    first = np.asarray(batches[0][0])
    assert first.dtype == np.float32 and first[0, 1, 1, 0] == 1.0 and first[0, 0, 0, 0] == -1.0
    unit = np.asarray(next(iter(fitting.make_dataset(x, y, 5, pixel_scale="unit", seed=0, shuffle=False)))[0])
    assert unit.max() == 1.0

    def order(seed):
        return [float(v) for _, ys in fitting.make_dataset(x, y, 5, pixel_scale="raw", seed=seed, shuffle=True)
                for v in ys]

    assert order(7) == order(7) and sorted(order(7)) == list(range(5))


def test_a_fit_resumed_from_its_checkpoint_writes_each_epoch_once(tmp_path):
    """Three epochs, then a new attempt from the checkpoint of epoch 2: epochs 3 and 4 follow, none twice."""
    settings = load_settings({"IMGQ_HOME": str(tmp_path / "home")})
    req, data = request(epochs=4), regression_data()
    prep = Preprocessing(16, 16, pixel_scale="raw")
    fitting.seed(req.seed)
    rows = []

    def attempt_until(epochs: int, folder: Path, checkpoint: tuple[int, str | None]):
        folder.mkdir()
        heartbeat = training_attempt.AttemptHeartbeat("job-1", interval=60)
        rec = fitting.EpochRecorder(folder, heartbeat, lambda *row: rows.append(row), steps=3, epochs=req.epochs)
        model, start = fitting.build_or_resume_model(req, None, data, prep, settings, checkpoint_epoch=checkpoint[0],
                                                     checkpoint_path=checkpoint[1])
        phases = [fitting.FitPhase(0, 1e-3, False), fitting.FitPhase(epochs, 1e-3, True)]
        fitting.fit(model, req, phases, fitting.make_datasets(req, data, prep), [rec], steps=3, start_epoch=start)
        return model, start

    _, start = attempt_until(2, tmp_path / "attempt-1", (0, None))
    assert start == 0 and [r[0] for r in rows] == [1, 2]
    model, start = attempt_until(4, tmp_path / "attempt-2", (2, str(rows[-1][3])))
    assert start == 2 and [r[0] for r in rows] == [1, 2, 3, 4]
    assert model.optimizer.iterations.numpy() == 4 * 3  # the optimizer went on from the checkpoint's state
    metrics = comparison.evaluate_holdout("regression", model, data, prep)
    assert metrics["n"] == 4 and np.isfinite(metrics["mae"]) and "baseline_mae" in metrics


# --------------------------------------------------------------------------------------------- gate and decision


def signature(**over) -> dict:
    return {"task": "regression", "input_height": 16, "input_width": 16, "resize_mode": "stretch",
            "pixel_scale": "raw", "class_names": None, "output_names": ["views"],
            "target_transform": {"kind": "none"}, **over}


def test_without_a_production_version_the_gate_promotes():
    result = comparison.compare_with_production(request(gate={}), None, regression_data(), signature(),
                                                {"mae": 2.0}, None, None)
    assert result["production"] is None and result["gate"]["decision"] == "promoted"
    assert registration.decide(result) == registration.Decision(True, "promoted", "no production version yet")


def test_a_production_version_that_takes_another_input_is_kept_for_a_person_to_compare():
    production = SimpleNamespace(name="views", version=3, input_height=32, input_width=32, resize_mode="stretch",
                                 pixel_scale="raw", path="/nowhere.keras")
    result = comparison.compare_with_production(request(gate={}), None, regression_data(), signature(),
                                                {"mae": 0.1}, production, None)
    assert result["production"] == "views@3" and "production_metrics" not in result
    assert result["gate"] == {"decision": "kept", "reason": "production takes a different input; compare by hand"}
    assert not registration.decide(result).promote


def test_without_a_gate_the_schedule_records_kept_and_why():
    assert registration.decide(None) == registration.Decision(False, "kept", "no gate configured")


def test_the_shadow_sample_draws_from_every_split_the_same_way_each_time():
    data = regression_data(n_train=50, n_validation=20, n_holdout=20)
    ids, x, _ = comparison.shadow_sample(data, 60, seed=4)
    assert len(ids) == len(set(ids)) == 60 and x.shape == (60, 16, 16, 3)
    assert {i.split("-")[0] for i in ids} == {"i1", "i2", "i3"}
    assert comparison.shadow_sample(data, 60, seed=4)[0] == ids
    assert len(comparison.shadow_sample(data, 500, seed=4)[0]) == 90
    assert comparison.shadow_sample(data, 0, seed=4) == ([], None, [])


def test_the_lineage_names_the_job_parent_data_and_hyperparameters():
    parent = SimpleNamespace(name="views", version=2)
    data = regression_data()
    data.stats = {"rows": 20}
    lineage = registration.lineage_of(fine_tune(), "job-9", parent, data, {"mae": 1.5}, duration=12.345)
    assert (lineage["job_id"], lineage["parent"], lineage["data"], lineage["holdout_metrics"]) == \
        ("job-9", "views@2", {"rows": 20}, {"mae": 1.5})
    assert lineage["dataset"]["path"] == "items.csv" and "model" not in lineage["hyperparameters"]
    assert lineage["duration_seconds"] == 12.35 and lineage["code_version"].startswith("imgq ")

