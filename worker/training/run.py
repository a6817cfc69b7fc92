"""The training process: `python -m worker.training.run JOB_ID [ATTEMPT]`, started fresh for each attempt.

Loads the data through the decoded-image cache, builds or loads the model, resumes from the last
checkpoint when there is one, trains with per-epoch checkpoints and metrics in the database,
evaluates on the fixed holdout, registers the new version with its lineage, and (when asked)
compares it with production and promotes it through the gate.
Exit codes: 0 done or canceled; 3 failed for good (recorded); anything else: retry.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from shared.config import settings as load_settings
from shared.db import retry_on_outage, session_scope
from shared.errors import ImgqError
from shared.imaging import Preprocessing
from shared.paths import path_inside
from shared.tables import Job, ModelVersion, ScheduleRun, TrainRun, utcnow
from shared.train_spec import TrainRequest
from worker.training import lifecycle as life

log = logging.getLogger("imgq.train")
FAILED_FOR_GOOD = 3


class Canceled(Exception):
    pass


OUTAGE_PATIENCE = 600.0  # seconds a training waits out a database outage before it gives up the attempt


class Superseded(Exception):
    """A newer attempt owns the run (this one was presumed dead): stop without writing anything."""


class Heartbeat(threading.Thread):
    """Tells the database this process lives (every few seconds) and learns whether the job was canceled."""

    def __init__(self, job_id: str, interval: float, attempt: int | None = None):
        super().__init__(daemon=True, name="imgq-heartbeat")
        self.job_id, self.interval, self.attempt = job_id, interval, attempt
        self.canceled = threading.Event()
        self.superseded = threading.Event()
        self.progress: dict = {}
        self._stop = threading.Event()
        self._parent = os.getppid()

    def beat(self) -> None:
        with session_scope() as s:
            status = life.heartbeat(s, self.job_id, self.attempt, **dict(self.progress))
        if status == "canceled":
            self.canceled.set()
        elif status == life.SUPERSEDED:
            self.superseded.set()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            if os.getppid() != self._parent:  # the worker that started us is gone: stop, be taken up again
                os._exit(75)
            try:
                self.beat()
            except Exception:  # a database hiccup must not kill training; the next beat retries
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self._stop.set()


def _code_version() -> str:
    here = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("imgq")
    except PackageNotFoundError:
        pkg = "unknown"
    return f"imgq {pkg}" + (f" ({sha})" if sha else "")


def _preprocessing(req: TrainRequest, parent: ModelVersion | None) -> Preprocessing:
    from worker.training.models import recommended_pixel_scale

    if parent is not None:
        return Preprocessing(parent.input_height, parent.input_width, resize_mode=parent.resize_mode,
                             pixel_scale=parent.pixel_scale)
    size = req.input_size
    resize = req.resize_mode or ("letterbox" if req.task == "keypoints" else "stretch")
    scale = req.pixel_scale or recommended_pixel_scale(req.base.architecture)
    return Preprocessing(size, size, resize_mode=resize, pixel_scale=scale)


def _resolve_weights(path: str | None, settings) -> str | None:
    if path is None:
        return None
    from shared.paths import OutsideDataRoots, resolve_inside

    try:
        return str(resolve_inside((*settings.data_roots, settings.model_store), path))
    except OutsideDataRoots as exc:
        raise ImgqError(f"backbone_weights: {exc}") from None


def _build(req: TrainRequest, parent, data, prep, settings):
    from shared.model_inspect import load_keras_safely
    from worker.training import models as m

    outputs = {"classification": len(data.class_names or []), "regression": len(req.dataset.target_columns),
               "keypoints": len(req.dataset.target_columns)}[req.task]
    head = m.HeadSpec(task=req.task, outputs=outputs)
    if parent is not None:
        return m.head_for_existing(load_keras_safely(parent.path), head)
    return m.build_model(req.base.architecture, (prep.height, prep.width), head,
                         backbone_weights=_resolve_weights(req.base.backbone_weights, settings),
                         width=req.base.width, seed=req.seed, pixel_scale=prep.pixel_scale)


class EpochRecorder:
    """Keras callback: checkpoint + metrics each epoch (one transaction after the file is in place),
    progress and cancellation each batch."""

    def __new__(cls, *args, **kwargs):
        import keras

        class _Recorder(keras.callbacks.Callback):
            def __init__(self, job_id, folder: Path, heartbeat: Heartbeat, steps: int, epochs: int):
                super().__init__()
                self.job_id, self.folder, self.hb, self.steps, self.epochs = job_id, folder, heartbeat, steps, epochs
                self._epoch_start = self._last = time.monotonic()
                self.train_seconds = 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self._epoch_start = time.monotonic()

            def on_train_batch_end(self, batch, logs=None):
                if self.hb.canceled.is_set() or self.hb.superseded.is_set():
                    self.model.stop_training = True
                now = time.monotonic()
                if now - self._last > 1.0:
                    self._last = now
                    per_step = (now - self._epoch_start) / (batch + 1)
                    done = self.hb.progress.get("epoch", 0)
                    remaining = (self.epochs - done) * self.steps - (batch + 1)
                    self.hb.progress.update(step=batch + 1, eta_seconds=round(per_step * remaining, 1))

            def on_epoch_end(self, epoch, logs=None):
                seconds = time.monotonic() - self._epoch_start
                self.train_seconds += seconds
                number = epoch + 1
                path = self.folder / f"epoch-{number:04d}.keras"
                tmp = path.with_suffix(".tmp.keras")
                self.model.save(tmp)
                os.replace(tmp, path)
                metrics = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
                if self.hb.superseded.is_set():
                    return  # a newer attempt owns the run: write nothing
                def record():
                    with session_scope() as s:
                        life.record_epoch(s, self.job_id, number, metrics, seconds, str(path), self.hb.attempt)

                retry_on_outage(record, within=OUTAGE_PATIENCE)
                self.hb.progress.update(epoch=number, step=0)
                for old in self.folder.glob("epoch-*.keras"):
                    if old != path:
                        old.unlink(missing_ok=True)

        return _Recorder(*args, **kwargs)


def _datasets(split, batch_size, augmentation, seed, shuffle, pixel_scale):
    """uint8 pixels -> shuffled batches in the model's input range (scaled inside the pipeline)."""
    import tensorflow as tf

    def scale(x, y):
        x = tf.cast(x, tf.float32)
        if pixel_scale == "unit":
            x = x / 255.0
        elif pixel_scale == "symmetric":
            x = x / 127.5 - 1.0
        return x, y

    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    if shuffle:
        ds = ds.shuffle(len(split.ids), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(scale, num_parallel_calls=tf.data.AUTOTUNE)
    if augmentation is not None:
        ds = ds.map(lambda x, y: (augmentation(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _stop_if_told(hb: Heartbeat) -> None:
    if hb.superseded.is_set():
        raise Superseded()
    if hb.canceled.is_set():
        raise Canceled()


def _start(job_id: str):
    """The run's request, its last checkpoint and its parent version; epochs after the checkpoint dropped."""
    with session_scope() as s:
        run = life.start_attempt(s, job_id)
        job = s.get(Job, job_id)
        parent = s.get(ModelVersion, job.model_version_id) if job.model_version_id else None
        if parent is not None:
            s.expunge(parent)
        return run.spec, run.checkpoint_epoch, run.checkpoint_path, parent


def train(job_id: str, attempt: int | None = None) -> None:
    settings = load_settings()
    spec, checkpoint_epoch, checkpoint_path, parent = retry_on_outage(lambda: _start(job_id),
                                                                      within=OUTAGE_PATIENCE)
    req = TrainRequest.model_validate(spec)
    hb = Heartbeat(job_id, interval=min(5.0, settings.heartbeat_timeout / 4), attempt=attempt)
    hb.progress.update(phase="loading data", epoch=checkpoint_epoch)
    retry_on_outage(hb.beat, within=OUTAGE_PATIENCE)
    hb.start()
    started = time.monotonic()
    from worker.device import configure_tensorflow

    configure_tensorflow()
    import keras

    from worker.training import data as training_data
    from worker.training import evaluate
    from worker.training import models as m

    keras.utils.set_random_seed(req.seed)
    prep = _preprocessing(req, parent)
    data = training_data.prepare(req, settings, prep, parent=parent)
    train_split, val_split, holdout = (data.splits[k] for k in ("train", "validation", "holdout"))
    steps = -(-len(train_split.ids) // req.batch_size)
    hb.progress.update(phase="training", steps_per_epoch=steps, data_stats=data.stats)
    retry_on_outage(hb.beat, within=OUTAGE_PATIENCE)

    # each attempt checkpoints into a folder of its own: a superseded attempt never deletes the live one's files
    folder = path_inside(settings.data_dir, "checkpoints", job_id, f"attempt-{attempt or 0}")
    folder.mkdir(parents=True, exist_ok=True)
    resumed = checkpoint_epoch > 0 and checkpoint_path and Path(checkpoint_path).is_file()
    if resumed:
        from shared.model_inspect import load_keras_safely

        # weights, trainable flags and optimizer state as of the last finished epoch: the phase it
        # was in goes on with them (fit() below skips compiling once)
        model = load_keras_safely(checkpoint_path, compile=True)
        model_compiled = True
        start_epoch = checkpoint_epoch
    else:
        model = _build(req, parent, data, prep, settings)
        model_compiled, start_epoch = False, 0
    augmentation = m.make_augmentation(req.augmentation, req.task, pixel_scale=prep.pixel_scale, seed=req.seed)
    train_ds = _datasets(train_split, req.batch_size, augmentation, req.seed, shuffle=True,
                         pixel_scale=prep.pixel_scale)
    val_ds = _datasets(val_split, req.batch_size, None, req.seed, shuffle=False, pixel_scale=prep.pixel_scale)
    recorder = EpochRecorder(job_id, folder, hb, steps, req.epochs)
    callbacks = [recorder]
    if req.early_stopping is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=req.early_stopping.monitor,
                                                       patience=req.early_stopping.patience,
                                                       restore_best_weights=True))

    def fit(until: int, lr: float, backbone_trainable: bool, unfreeze_top):
        nonlocal model_compiled, start_epoch
        if start_epoch >= until:
            return
        if not model_compiled:
            m.set_trainable(model, backbone_trainable=backbone_trainable, unfreeze_top=unfreeze_top)
            schedule = m.make_schedule(req.optimizer.schedule, lr, steps_per_epoch=steps, epochs=until - start_epoch,
                                       warmup_epochs=req.optimizer.warmup_epochs)
            optimizer = m.make_optimizer(req.optimizer.name, schedule, momentum=req.optimizer.momentum,
                                         weight_decay=req.optimizer.weight_decay)
            m.compile_for_task(model, req.task, optimizer)
        model.fit(train_ds, validation_data=val_ds, epochs=until, initial_epoch=start_epoch,
                  callbacks=callbacks, verbose=0, shuffle=False)  # tf.data shuffles
        model_compiled = False  # the next phase recompiles with its own trainable layers and rate
        start_epoch = max(start_epoch, until)

    # Freezing only makes sense over learned weights: a parent version, or a backbone loaded from a file.
    head_epochs = min(req.freeze.head_epochs, req.epochs) if parent is not None or req.base.backbone_weights else 0
    fit(head_epochs, req.optimizer.learning_rate, False, None)
    _stop_if_told(hb)
    fit(req.epochs, req.optimizer.learning_rate * (req.freeze.fine_tune_lr_factor if head_epochs else 1.0),
        True, req.freeze.unfreeze_top)
    _stop_if_told(hb)

    hb.progress.update(phase="evaluating", eta_seconds=None)
    predicted = evaluate.to_user_units(req.task, evaluate.predict(model, holdout.x, prep.pixel_scale),
                                       data.target_transform, holdout.geometries)
    truth = holdout.y if req.task == "classification" else holdout.raw_targets
    metrics = evaluate.holdout_metrics(req.task, predicted, truth, train_truth=train_split.raw_targets)
    signature = {"task": req.task, "input_height": prep.height, "input_width": prep.width,
                 "resize_mode": prep.resize_mode, "pixel_scale": prep.pixel_scale,
                 "class_names": data.class_names, "output_names": data.output_names,
                 "target_transform": data.target_transform}
    comparison = _compare_and_report(req, model, data, signature, metrics, settings) if req.gate else None
    hb.progress.update(phase="registering")
    if not retry_on_outage(lambda: _owned(job_id, attempt), within=OUTAGE_PATIENCE):
        raise Superseded()
    version = retry_on_outage(lambda: _register(req, job_id, model, signature, metrics, data, parent, settings,
                                                duration=time.monotonic() - started), within=OUTAGE_PATIENCE)
    retry_on_outage(lambda: _succeed(job_id, attempt, req, version, metrics, comparison, data), within=OUTAGE_PATIENCE)
    hb.stop()
    shutil.rmtree(folder.parent, ignore_errors=True)  # every attempt's checkpoints: the job is done
    log.info("train job %s done: %s@%s holdout %s", job_id, req.model, version.version, metrics)


def _owned(job_id: str, attempt: int | None) -> bool:
    with session_scope() as s:
        return life.owns(s, job_id, attempt)


def _succeed(job_id, attempt, req, version, metrics, comparison, data) -> None:
    """Promote (when the gate says so) and mark the run done, in one transaction, only if this attempt
    still owns the run."""
    promoted = None
    with session_scope() as s:
        if comparison is not None and comparison["gate"]["decision"] == "promoted":
            from shared.model_registry import set_alias

            set_alias(s, req.model, "production", version.version)
            promoted = version.version
        if not life.succeed(s, job_id, attempt, result_version_id=version.id, holdout_metrics=metrics,
                            comparison=comparison, data_stats=data.stats, eta_seconds=None):
            raise Superseded()
        run = s.get(TrainRun, job_id)
        if run.schedule_run_id is not None:
            slot = s.get(ScheduleRun, run.schedule_run_id)
            slot.decision = "promoted" if promoted else "kept"
            slot.reason = comparison["gate"]["reason"] if comparison else "no gate configured"


def _compare_and_report(req, model, data, signature, metrics, settings) -> dict:
    """Evaluate production on the same holdout, shadow-score a sample next to it, apply the gate."""
    from shared.errors import NotFound
    from shared.model_inspect import load_keras_safely
    from shared.model_registry import resolve
    from worker.training import evaluate

    holdout = data.splits["holdout"]
    with session_scope() as s:
        try:
            production = resolve(s, req.model)
            s.expunge(production)
        except NotFound:
            production = None
    task = req.task
    result: dict = {"production": None, "candidate_metrics": metrics}
    if production is None:
        result["gate"] = evaluate.gate(task, metrics, None, req.gate.metric, req.gate.min_improvement)
        return result
    same_input = (production.input_height, production.input_width, production.resize_mode,
                  production.pixel_scale) == (signature["input_height"], signature["input_width"],
                                              signature["resize_mode"], signature["pixel_scale"])
    result["production"] = f"{production.name}@{production.version}"
    if not same_input:
        result["gate"] = {"decision": "kept", "reason": "production takes a different input; compare by hand"}
        return result
    prod_model = load_keras_safely(production.path)
    truth = holdout.y if task == "classification" else holdout.raw_targets
    prod_holdout = evaluate.to_user_units(task, evaluate.predict(prod_model, holdout.x, signature["pixel_scale"]),
                                          production.target_transform, holdout.geometries)
    result["production_metrics"] = evaluate.holdout_metrics(task, prod_holdout, truth,
                                                            train_truth=data.splits["train"].raw_targets)
    result["gate"] = evaluate.gate(task, metrics, result["production_metrics"], req.gate.metric,
                                   req.gate.min_improvement)
    # shadow scoring: a sample of the whole current catalog, both models side by side
    pool = [(sid, x, g) for split in data.splits.values() for sid, x, g in zip(split.ids, split.x, split.geometries)]
    rng = np.random.default_rng(req.seed)
    pick = rng.choice(len(pool), size=min(req.shadow_sample, len(pool)), replace=False) if pool else []
    ids = [pool[i][0] for i in pick]
    if ids:
        x = np.stack([pool[i][1] for i in pick])
        geoms = [pool[i][2] for i in pick]
        scale = signature["pixel_scale"]
        cand = evaluate.to_user_units(task, evaluate.predict(model, x, scale), signature["target_transform"], geoms)
        prod = evaluate.to_user_units(task, evaluate.predict(prod_model, x, scale), production.target_transform,
                                      geoms)
        result["shadow"] = evaluate.shadow_diff(task, ids, cand, prod, class_names=signature["class_names"])
    return result


def _register(req, job_id, model, signature, metrics, data, parent, settings, *, duration):
    """The new version; idempotent: an attempt that died after registering finds its version again."""
    from sqlalchemy import select

    from shared.model_registry import Signature, import_model

    with session_scope() as s:
        for version in s.scalars(select(ModelVersion).where(ModelVersion.name == req.model)):
            if (version.lineage or {}).get("job_id") == job_id:
                s.expunge(version)
                return version

    lineage = {"job_id": job_id, "parent": f"{parent.name}@{parent.version}" if parent else None,
               "architecture": req.base.architecture, "dataset": req.dataset.model_dump(mode="json"),
               "data": data.stats, "hyperparameters": req.model_dump(mode="json", exclude={"dataset", "model"}),
               "holdout_metrics": metrics, "code_version": _code_version(),
               "duration_seconds": round(duration, 2), "trained_at": utcnow().isoformat()}
    with tempfile.TemporaryDirectory(dir=settings.model_store) as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        with session_scope() as s:
            # promote=None: the first version of a new name becomes production, later ones wait for the gate
            version = import_model(s, path, req.model, Signature(**signature), settings.model_store,
                                   description=f"trained by job {job_id}", lineage=lineage, promote=None)
            s.expunge(version)
    return version


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_id = argv[0]
    attempt = int(argv[1]) if len(argv) > 1 else None  # fences this process's writes (see lifecycle)
    from worker.training.data import DataError

    try:
        train(job_id, attempt)
    except Superseded:
        log.warning("train job %s: attempt %s was superseded by a newer attempt; it stops, writing nothing",
                    job_id, attempt)
    except Canceled:
        with session_scope() as s:
            life.canceled(s, job_id, attempt)
        log.info("train job %s canceled", job_id)
    except (DataError, ImgqError, ValueError) as exc:  # no retry mends these
        message = getattr(exc, "message", None) or str(exc)
        log.error("train job %s failed: %s", job_id, message)
        with session_scope() as s:
            life.fail(s, job_id, message, attempt)
        return FAILED_FOR_GOOD
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
