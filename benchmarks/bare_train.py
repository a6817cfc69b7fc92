#!/usr/bin/env python
"""The bare training script that train_throughput.py times against a whole train job: the same work, end to end,
in one plain process, with none of the service around it (no database, queue, heartbeat, decoded-image cache,
checkpoints, metrics rows or registration).

Phases, each timed from this process's first line: imports (TensorFlow and Keras included), data (the manifest
read with shared.images.datasets.load_dataset, split with assign_splits salted as the job salts it, every image read and
decoded with shared.images.imaging.load_for_model in `--threads` threads into uint8 pixels, log1p targets), build (the
job's worker.training.models.build_model + compile_for_task "adam", seeded as the job is), fit (the job's tf.data
pipeline, worker.training.fitting.make_dataset: shuffle, batch, scale per batch, prefetch; validation each epoch),
evaluate (the holdout through worker.training.evaluate, as the job), save (model.save to `--out`).

Run by train_throughput.py as a child process; prints one JSON line (phase seconds, epoch seconds, losses, split
sizes, holdout metrics, and `t0`, the epoch time of its first line, so that the parent can tell process start).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--roots", required=True, help="data roots, os.pathsep-separated")
    p.add_argument("--manifest", required=True, help="the dataset's manifest, relative to a data root")
    p.add_argument("--salt", required=True, help="the split's salt: the job's model name")
    p.add_argument("--out", required=True, help="where the trained model is saved (.keras)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--input-size", type=int, required=True)
    p.add_argument("--architecture", default="vgg")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_data(args, prep):
    """(train, validation, holdout) as (uint8 pixels, learned targets, raw targets), and the split sizes."""
    import numpy as np

    from shared.images.datasets import DatasetSpec, assign_splits, load_dataset
    from shared.images.imaging import ImageError, load_for_model
    from shared.models import targets as target_transforms

    spec = DatasetSpec(path=args.manifest, image_column="image", id_column="id", target_columns=["pageviews"])
    frame = load_dataset(tuple(Path(r) for r in args.roots.split(os.pathsep)), spec)
    frame = assign_splits(frame, salt=args.salt, validation=0.1, holdout=0.1)

    def one(path):
        try:
            raw, _ = load_for_model(Path(path).read_bytes(), prep, max_pixels=args.max_pixels)
        except (ImageError, OSError):
            return None
        return np.clip(np.rint(raw), 0, 255).astype(np.uint8)

    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        pixels = list(pool.map(one, frame["path"].tolist()))
    ok = np.array([x is not None for x in pixels])
    frame, pixels = frame[ok].reset_index(drop=True), [x for x in pixels if x is not None]
    raw = frame[["pageviews"]].to_numpy(dtype=np.float64)
    out = {}
    for name in ("train", "validation", "holdout"):
        mask = (frame["split"] == name).to_numpy()
        y = target_transforms.forward({"kind": "log1p"}, raw[mask]).astype(np.float32)
        out[name] = (np.stack([x for x, keep in zip(pixels, mask) if keep]), y, raw[mask])
    return out, {k: int(len(v[0])) for k, v in out.items()}


def fit(args, keras, make_dataset, model, data, pixel_scale: str) -> tuple[list[float], list[float]]:
    """model.fit over the job's pipeline (`make_dataset`: worker.training.fitting's); returns (epoch seconds,
    training loss per epoch)."""
    def pipeline(x, y, shuffle):
        return make_dataset(x, y, args.batch_size, pixel_scale=pixel_scale, seed=args.seed, shuffle=shuffle)

    class EpochTimer(keras.callbacks.Callback):  # epoch hooks only: Keras keeps its asynchronous batch callbacks
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self._t = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.monotonic() - self._t)

    timer = EpochTimer()
    (x, y, _), (xv, yv, _) = data["train"], data["validation"]
    history = model.fit(pipeline(x, y, True), validation_data=pipeline(xv, yv, False), epochs=args.epochs,
                        callbacks=[timer], verbose=0, shuffle=False)
    return timer.seconds, [float(v) for v in history.history["loss"]]


def main(argv=None) -> int:
    t0 = time.time()
    args = parse_args(argv)
    marks = {}

    def mark(name):
        marks[name] = round(time.time() - t0 - sum(marks.values()), 3)

    from worker.device import configure_tensorflow

    tf = configure_tensorflow()
    import keras

    from shared.images.imaging import Preprocessing
    from worker.training import evaluate, fitting
    from worker.training import models as m

    mark("imports")
    prep = Preprocessing(args.input_size, args.input_size, resize_mode="stretch", pixel_scale="raw")
    data, sizes = load_data(args, prep)
    mark("data")
    keras.utils.set_random_seed(args.seed)
    model = m.build_model(args.architecture, (args.input_size, args.input_size), m.HeadSpec("regression", 1),
                          width=args.width, seed=args.seed, pixel_scale=prep.pixel_scale)
    m.compile_for_task(model, "regression", "adam")
    mark("build")
    epoch_seconds, losses = fit(args, keras, fitting.make_dataset, model, data, prep.pixel_scale)
    mark("fit")
    x, _, raw = data["holdout"]
    predicted = evaluate.to_user_units("regression", evaluate.predict(model, x, prep.pixel_scale),
                                       {"kind": "log1p"}, None)
    metrics = evaluate.holdout_metrics("regression", predicted, raw, train_truth=data["train"][2])
    mark("evaluate")
    model.save(args.out)
    mark("save")
    print(json.dumps({"t0": t0, "end": time.time(), "phases_s": marks, "epoch_seconds": epoch_seconds,
                      "loss_per_epoch": losses, "split_sizes": sizes, "holdout_metrics": metrics,
                      "tensorflow": tf.__version__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
