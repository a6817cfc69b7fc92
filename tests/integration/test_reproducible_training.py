"""Reproducible runs: the same request, with augmentation, trained twice in fresh processes (as the training process
runs: worker.training.run's phases) gives the same epoch losses; with "deterministic": true, identical weights."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
AUGMENTED = {"flip": True, "rotation": 0.1, "zoom": 0.1, "translate": 0.1, "contrast": 0.2, "brightness": 0.1}


def _split(n: int, seed: int, prefix: str):
    """Three classes of 16x16 images: a bright square in the left, middle or right third, on noise."""
    from worker.training.data import Split

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = rng.integers(0, 80, (n, 16, 16, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        x[i, 5:11, 1 + 5 * label:6 + 5 * label] = 230
    return Split(ids=[f"{prefix}{i}" for i in range(n)], x=x, y=labels.astype(np.int64), geometries=[None] * n)


def train_once(deterministic: bool) -> dict:
    """One run in this (fresh) process: the epoch losses and a hash of the final weights."""
    from shared.core.config import load_settings
    from shared.images.imaging import Preprocessing
    from shared.schemas.training import TrainRequest
    from worker.training import run
    from worker.training.data import TrainingData

    req = TrainRequest.model_validate({
        "model": "shapes", "task": "classification", "input_size": 16, "epochs": 2, "batch_size": 16,
        "dataset": {"path": "x.csv", "label_column": "label"}, "base": {"architecture": "vgg", "width": 4},
        "augmentation": AUGMENTED, "seed": 11, "deterministic": deterministic})
    run.prepare_tensorflow(req.seed, req.deterministic)
    from worker.training import fitting

    data = TrainingData(splits={"train": _split(240, 1, "t"), "validation": _split(48, 2, "v"),
                                "holdout": _split(12, 3, "h")},
                        class_names=["left", "middle", "right"], target_transform={"kind": "none"}, output_names=None)
    prep = Preprocessing(16, 16, pixel_scale="raw")
    model = fitting.new_model(req, None, data, prep, load_settings({}))
    steps = fitting.steps_per_epoch(240, req.batch_size)
    losses: list[float] = []
    import keras

    class Losses(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            losses.append(float(logs["loss"]))

    fitting.fit(model, req, fitting.plan_phases(req, learned_weights=False), fitting.make_datasets(req, data, prep),
                [Losses()], steps=steps, start_epoch=0)
    digest = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()
    return {"losses": losses, "weights": digest}


def _in_a_fresh_process(deterministic: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    code = ("import json, sys; from tests.integration.test_reproducible_training import train_once; "
            f"print('RESULT', json.dumps(train_once({deterministic})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_two_runs_of_the_same_request_with_augmentation_give_the_same_epoch_losses():
    first, second = _in_a_fresh_process(False), _in_a_fresh_process(False)
    assert len(first["losses"]) == 2 and all(np.isfinite(first["losses"]))
    np.testing.assert_allclose(first["losses"], second["losses"], rtol=1e-6)


def test_two_deterministic_runs_give_identical_weights():
    first, second = _in_a_fresh_process(True), _in_a_fresh_process(True)
    assert first["losses"] == second["losses"]
    assert first["weights"] == second["weights"]
