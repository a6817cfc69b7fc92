"""Fitting a model in phases: the model to start from, the tf.data pipelines, the phase plan, and the callback
that checkpoints each epoch.

Importing this module imports Keras: the training process imports it after worker.device.configure_tensorflow.

Invariants: an epoch's checkpoint file is in place before its metrics row is written, and both become visible
in one transaction (EpochRecorder -> attempt.record_epoch), so a resumed attempt starts after the last epoch
with a row, with that epoch's weights, trainable flags and optimizer state; a canceled or superseded attempt
stops at the next batch; a superseded one writes nothing.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from shared.core.config import Settings
from shared.core.errors import ImgqError
from shared.core.paths import OutsideDataRoots, resolve_inside
from shared.images.imaging import Preprocessing
from shared.models.model_inspect import load_keras_safely
from shared.schemas.training import TrainRequest
from shared.services.model_files import version_file
from worker import pixel_scaling
from worker.training import models
from worker.training.data import TrainingData

PREFETCH_BATCHES = 2  # batches ready ahead of the step: a fixed few (AUTOTUNE may hold many, memory growing)


def seed(value: int, *, deterministic: bool = False) -> None:
    """Python, NumPy and TensorFlow seeded; with `deterministic`, TensorFlow's op determinism on as well.

    What is guaranteed: the same request, seed and files give the same initial weights, the same order of training
    images in every epoch and the same augmented images (drawn statelessly from (seed, image, epoch):
    worker/training/augmentation.py), whatever the pipeline's parallelism, so the same epoch losses up to the
    float rounding of parallel kernels. With `deterministic` (a train request's "deterministic": true) every op
    is made deterministic too, for bit-identical weights on the same machine and software, at some cost in speed
    (and an error for an op that has no deterministic kernel)."""
    keras.utils.set_random_seed(value)
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def steps_per_epoch(train_items: int, batch_size: int) -> int:
    return -(-train_items // batch_size)


# --------------------------------------------------------------------------------------------- the model


def _resolve_weights(path: str | None, settings: Settings) -> str | None:
    if path is None:
        return None
    try:
        return str(resolve_inside((*settings.data_roots, settings.model_store), path))
    except OutsideDataRoots as exc:
        raise ImgqError(f"backbone_weights: {exc}") from None


def new_model(req: TrainRequest, parent, data: TrainingData, prep: Preprocessing, settings: Settings) -> keras.Model:
    """Not compiled: the parent version with a head for this data's outputs, or a new model of the architecture."""
    outputs = {"classification": len(data.class_names or []), "regression": len(req.dataset.target_columns),
               "keypoints": len(req.dataset.target_columns)}[req.task]
    head = models.HeadSpec(task=req.task, outputs=outputs)
    if parent is not None:
        return models.head_for_existing(load_keras_safely(str(version_file(parent, settings))), head)
    return models.build_model(req.base.architecture, (prep.height, prep.width), head,
                              backbone_weights=_resolve_weights(req.base.backbone_weights, settings),
                              width=req.base.width, seed=req.seed, pixel_scale=prep.pixel_scale)


def build_or_resume_model(req: TrainRequest, parent, data: TrainingData, prep: Preprocessing, settings: Settings, *,
                          checkpoint_epoch: int, checkpoint_path: Path | str | None) -> tuple[keras.Model, int]:
    """(model, the epoch it has finished): the last checkpoint when its file is there, compiled with the
    trainable flags and optimizer state of the phase it was in; otherwise a new model (epoch 0, not compiled)."""
    if checkpoint_epoch > 0 and checkpoint_path is not None and Path(checkpoint_path).is_file():
        return load_keras_safely(str(checkpoint_path), compile=True), checkpoint_epoch
    return new_model(req, parent, data, prep, settings), 0


# --------------------------------------------------------------------------------------------- the data


def read_pixels(x, indices):
    """A tf.data op: the uint8 pixels of `x` (a PixelFile, or an array in memory) at a batch of `indices`, read in
    Python (pread releases the GIL, so parallel calls overlap)."""
    import tensorflow as tf

    images = tf.numpy_function(lambda i: x[i], [indices], tf.uint8, stateful=False)
    return tf.ensure_shape(images, (None, *x.shape[1:]))


def make_dataset(x, y: np.ndarray, batch_size: int, *, pixel_scale: str, seed: int, shuffle: bool):
    """uint8 pixels (a PixelFile or an array) -> (shuffled) batches in the model's input range, read a batch at a
    time and scaled in the pipeline as serving scales them (worker/pixel_scaling.py): the validation pipeline."""
    import tensorflow as tf

    targets = tf.constant(y)
    items = tf.data.Dataset.range(len(x))
    if shuffle:
        items = items.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)  # indices only: 8 bytes each
    ds = items.batch(batch_size).map(
        lambda i: (pixel_scaling.scale_pixels_tf(read_pixels(x, i), pixel_scale), tf.gather(targets, i)),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(PREFETCH_BATCHES)


def train_dataset(x, y: np.ndarray, batch_size: int, *, pixel_scale: str, seed: int, epochs: range,
                  augmentation=None):
    """The training batches of `epochs` one after the other (fit with steps_per_epoch): each epoch in a stateless
    permutation of (seed, epoch) of the whole split, its batches read by index from `x` (a PixelFile, or an array),
    each image augmented by (seed, its index, epoch), then scaled per batch as serving scales. Neither depends on
    parallelism or on where a resumed run starts; memory holds the batches in flight, not the split."""
    import tensorflow as tf

    from worker.training.augmentation import epoch_order

    targets = tf.constant(y)

    def one_epoch(epoch):
        batches = tf.data.Dataset.from_tensor_slices(epoch_order(seed, epoch, len(x))).batch(batch_size)
        read = batches.map(lambda i: (read_pixels(x, i), i), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if augmentation is None:
            return read.map(lambda images, i: (images, tf.gather(targets, i)))
        return read.unbatch().map(lambda image, i: (augmentation(image, i, epoch), tf.gather(targets, i)),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)

    ds = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(one_epoch)
    ds = ds.map(lambda x, y: (pixel_scaling.scale_pixels_tf(x, pixel_scale), y), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.prefetch(PREFETCH_BATCHES)


def make_datasets(req: TrainRequest, data: TrainingData, prep: Preprocessing) -> tuple:
    """(the training pipeline of epochs [start, until) as a function `(start, until) -> dataset`, ordered and
    augmented as the request says; the validation pipeline)."""
    augmentation = models.make_augmentation(req.augmentation, req.task, seed=req.seed)
    train, validation = data.splits["train"], data.splits["validation"]

    def training(start: int, until: int):
        return train_dataset(train.x, train.y, req.batch_size, pixel_scale=prep.pixel_scale, seed=req.seed,
                             epochs=range(start, until), augmentation=augmentation)

    return (training, make_dataset(validation.x, validation.y, req.batch_size, pixel_scale=prep.pixel_scale,
                                   seed=req.seed, shuffle=False))


# --------------------------------------------------------------------------------------------- the phases


@dataclass(frozen=True)
class FitPhase:
    """Fit up to epoch `until` (counted from the run's start) at `learning_rate`."""
    until: int
    learning_rate: float
    backbone_trainable: bool
    unfreeze_top: int | None = None


def plan_phases(req: TrainRequest, *, learned_weights: bool) -> list[FitPhase]:
    """The head alone (backbone frozen) for `freeze.head_epochs`, then the layers `freeze` opens at a lower rate.
    Freezing only makes sense over learned weights (a parent version, or a backbone loaded from a file):
    without them the first phase is empty and the second runs at the full rate."""
    head_epochs = min(req.freeze.head_epochs, req.epochs) if learned_weights else 0
    rate = req.optimizer.learning_rate
    return [FitPhase(head_epochs, rate, backbone_trainable=False),
            FitPhase(req.epochs, rate * (req.freeze.fine_tune_lr_factor if head_epochs else 1.0),
                     backbone_trainable=True, unfreeze_top=req.freeze.unfreeze_top)]


def compile_for_phase(model: keras.Model, req: TrainRequest, phase: FitPhase, *, steps: int, epochs: int) -> None:
    """The phase's trainable layers, and a fresh optimizer whose schedule spans its `epochs`."""
    models.set_trainable(model, backbone_trainable=phase.backbone_trainable, unfreeze_top=phase.unfreeze_top)
    schedule = models.make_schedule(req.optimizer.schedule, phase.learning_rate, steps_per_epoch=steps,
                                    epochs=epochs, warmup_epochs=req.optimizer.warmup_epochs)
    optimizer = models.make_optimizer(req.optimizer.name, schedule, momentum=req.optimizer.momentum,
                                      weight_decay=req.optimizer.weight_decay)
    models.compile_for_task(model, req.task, optimizer)


def callbacks_for(req: TrainRequest, *callbacks) -> list:
    """`callbacks`, and early stopping when the request asks for it."""
    if req.early_stopping is None:
        return list(callbacks)
    return [*callbacks, keras.callbacks.EarlyStopping(monitor=req.early_stopping.monitor,
                                                      patience=req.early_stopping.patience,
                                                      restore_best_weights=True)]


def fit(model: keras.Model, req: TrainRequest, phases: list[FitPhase], datasets: tuple, callbacks: list, *,
        steps: int, start_epoch: int, between_phases=lambda: None) -> None:
    """Each phase from the epoch the one before reached (phases already done are skipped); `between_phases()`
    after each. A model resumed from a checkpoint (start_epoch > 0) goes on as compiled there; every phase
    after the first one fitted compiles again, with its own trainable layers and rate. `datasets` is
    make_datasets's pair: the training pipeline is made for each phase's epochs."""
    training, validation_ds = datasets
    compiled = start_epoch > 0
    for phase in phases:
        if start_epoch < phase.until:
            if not compiled:
                compile_for_phase(model, req, phase, steps=steps, epochs=phase.until - start_epoch)
            model.fit(training(start_epoch, phase.until), validation_data=validation_ds, epochs=phase.until,
                      initial_epoch=start_epoch, steps_per_epoch=steps, callbacks=callbacks, verbose=0,
                      shuffle=False)  # the pipeline orders each epoch
            compiled, start_epoch = False, phase.until
        between_phases()


class EpochRecorder(keras.callbacks.Callback):
    """Checkpoint and metrics each epoch, progress and cancellation each batch.

    `heartbeat` is the attempt's AttemptHeartbeat (its `canceled` and `superseded` events, its `progress` dict);
    `record(number, metrics, seconds, path)` writes an epoch's row once its checkpoint is in place
    (attempt.record_epoch): `publish(file)` says where (the file's path, or the URI it was uploaded to:
    worker/training/checkpoints.py) and `discard(path)` removes the one it replaces. Only the newest checkpoint is
    kept in `folder`."""

    def __init__(self, folder: Path, heartbeat, record, *, steps: int, epochs: int, clock=time.monotonic,
                 publish=None, discard=None):
        super().__init__()
        self.folder, self.heartbeat, self.record = folder, heartbeat, record
        self.steps, self.epochs, self.clock = steps, epochs, clock
        self.publish, self.discard = publish or (lambda path: path), discard
        self._published: str | None = None
        self._epoch_start = self._last = clock()
        self.train_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if self.heartbeat.canceled.is_set() or self.heartbeat.superseded.is_set():
            self.model.stop_training = True
        now = self.clock()
        if now - self._last > 1.0:
            self._last = now
            per_step = (now - self._epoch_start) / (batch + 1)
            done = self.heartbeat.progress.get("epoch", 0)
            remaining = (self.epochs - done) * self.steps - (batch + 1)
            self.heartbeat.progress.update(step=batch + 1, eta_seconds=round(per_step * remaining, 1))

    def on_epoch_end(self, epoch, logs=None):
        seconds = self.clock() - self._epoch_start
        self.train_seconds += seconds
        number = epoch + 1
        path = self.folder / f"epoch-{number:04d}.keras"
        tmp = path.with_suffix(".tmp.keras")
        self.model.save(tmp)
        os.replace(tmp, path)
        if self.heartbeat.superseded.is_set():
            return  # a newer attempt owns the run: write nothing
        metrics = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
        published = self.publish(path)
        self.record(number, metrics, seconds, published)
        self.heartbeat.progress.update(epoch=number, step=0)
        for old in self.folder.glob("epoch-*.keras"):
            if old != path:
                old.unlink(missing_ok=True)
        if self.discard is not None and self._published not in (None, published):
            self.discard(self._published)  # the previous epoch's, in the store (a local one is gone already)
        self._published = published
