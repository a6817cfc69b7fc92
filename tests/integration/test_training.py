"""Training end to end through real parts: HTTP -> PostgreSQL -> Redis -> worker -> a fresh training
process -> a new registered version; on a real data set no one here made (scikit-learn's digits)."""
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import TrainMetric

pytestmark = pytest.mark.integration


def post(stack, path, body, expect=202):
    resp = stack.http.post(stack.url(path), json=body, timeout=120)
    assert resp.status_code == expect, resp.text
    return resp.json()


def wait_train(stack, job_id, timeout=600):
    job = stack.wait_job(job_id, timeout=timeout, poll=1.0)
    assert job["status"] == "succeeded", job
    return job


def epochs_of(stack, job_id):
    body = stack.http.get(stack.url(f"/api/v1/jobs/{job_id}/epochs"), timeout=30).json()
    return body["epochs"]


def digits_request(name, manifest, **over):
    body = {"model": name, "task": "classification",
            "dataset": {"path": f"digits/{manifest}", "image_column": "image", "id_column": "id",
                        "label_column": "label"},
            "base": {"architecture": "vgg", "width": 16}, "input_size": 32, "epochs": 12, "batch_size": 32,
            "optimizer": {"name": "adam", "learning_rate": 0.002},
            "early_stopping": {"patience": 4, "monitor": "val_loss"}}
    body.update(over)
    return body


def test_digits_from_scratch(pg_stack, digits):
    name = "digits-scratch"  # fixed names: the same holdout on every run
    job = post(pg_stack, "/api/v1/jobs/train", digits_request(name, "all.csv"))
    assert job["kind"] == "train" and job["links"]["epochs"].endswith("/epochs")
    done = wait_train(pg_stack, job["id"])
    assert done["holdout_metrics"]["accuracy"] >= 0.9, done["holdout_metrics"]
    assert done["model"]["result"] == f"{name}@1"
    history = epochs_of(pg_stack, job["id"])
    assert [e["epoch"] for e in history] == list(range(1, len(history) + 1))
    assert all("val_loss" in e and "accuracy" in e for e in history)
    version = pg_stack.http.get(pg_stack.url(f"/api/v1/models/{name}/versions/1"), timeout=10).json()
    assert version["class_names"] == [str(i) for i in range(10)]
    assert version["lineage"]["dataset"]["path"] == "digits/all.csv"
    assert version["lineage"]["hyperparameters"]["optimizer"]["name"] == "adam"
    assert version["lineage"]["holdout_metrics"]["accuracy"] == done["holdout_metrics"]["accuracy"]
    assert version["aliases"] == ["production"]  # the first version of a name



def test_fine_tune_on_more_data_does_not_get_worse(pg_stack, digits):
    name = "digits-nightly"
    first = wait_train(pg_stack, post(pg_stack, "/api/v1/jobs/train",
                                      digits_request(name, "first-night.csv", epochs=14,
                                                     optimizer={"name": "adam", "learning_rate": 0.001},
                                                     early_stopping={"patience": 6, "monitor": "val_loss"}))["id"])
    second = wait_train(pg_stack, post(pg_stack, "/api/v1/jobs/train", digits_request(
        name, "all.csv", base={"version": name}, epochs=6, optimizer={"name": "adam", "learning_rate": 0.001},
        gate={"min_improvement": 0.0}))["id"])
    cmp = second["comparison"]
    # both versions measured on the same, fixed holdout of the larger data
    assert cmp["candidate_metrics"]["n"] == cmp["production_metrics"]["n"]
    assert cmp["candidate_metrics"]["accuracy"] >= cmp["production_metrics"]["accuracy"], cmp
    assert first["holdout_metrics"]["accuracy"] > 0.5
    assert second["model"]["parent"] == f"{name}@1"  # transfer learning from our own model
    assert cmp["production"] == f"{name}@1"
    assert 0 <= cmp["shadow"]["agreement"] <= 1 and cmp["shadow"]["items"] > 0


def brightness_images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        b = rng.uniform(0.05, 0.95)
        arr = np.clip(rng.normal(b * 255, 12, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"b{i:04d}.jpg", quality=95)
        rows.append({"id": f"b{i:04d}", "image": f"b{i:04d}.jpg", "views": float(np.expm1(8 * b))})
    pd.DataFrame(rows).to_csv(folder / "items.csv", index=False)
    return rows


def test_regression_learns_a_log_distributed_target_and_inverts_it(pg_stack):
    rows = brightness_images(pg_stack.data / "bright", 500)
    name = "views-brightness"  # a fixed name: the same holdout on every run
    job = wait_train(pg_stack, post(pg_stack, "/api/v1/jobs/train", {
        "model": name, "task": "regression", "target_transform": "log1p",
        "dataset": {"path": "bright/items.csv", "id_column": "id", "target_columns": ["views"]},
        "base": {"architecture": "vgg", "width": 8}, "input_size": 32, "epochs": 20, "batch_size": 16,
        "optimizer": {"name": "adam", "learning_rate": 0.002}})["id"])
    m = job["holdout_metrics"]
    assert m["mae"] < 0.35 * m["baseline_mae"], m  # far below predicting the mean
    version = pg_stack.http.get(pg_stack.url(f"/api/v1/models/{name}/versions/1"), timeout=10).json()
    assert version["target_transform"] == {"kind": "log1p"} and version["output_names"] == ["views"]
    # scoring the new version gives page views in their own units (the transform is inverted)
    sample = rows[:40]
    score = post(pg_stack, "/api/v1/jobs/score", {"model": name, "cache": False,
                                                  "items": [{"id": r["id"], "uri": f"bright/{r['image']}"}
                                                            for r in sample]})
    pg_stack.wait_job(score["id"])
    results = {r["id"]: r["outputs"]["views"] for r in pg_stack.all_results(score["id"])}
    truth = np.array([r["views"] for r in sample])
    got = np.array([results[r["id"]] for r in sample])
    assert np.median(np.abs(np.log1p(got) - np.log1p(truth))) < 0.6
    assert got.max() > 50  # in page views, not in log space


def keypoint_images(folder, n, seed=0):
    """A white disc at a known place on a dark photo of varied aspect ratio."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        w, h = int(rng.integers(48, 96)), int(rng.integers(48, 96))
        x, y = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        img = Image.new("RGB", (w, h), (20, 20, 30))
        ImageDraw.Draw(img).ellipse([x - 4, y - 4, x + 4, y + 4], fill=(255, 255, 255))
        img.save(folder / f"k{i:04d}.png")
        rows.append({"id": f"k{i:04d}", "image": f"k{i:04d}.png", "x": x, "y": y, "w": w, "h": h})
    pd.DataFrame(rows).to_csv(folder / "items.csv", index=False)
    return rows


def test_keypoints_are_learned_and_come_back_in_original_pixels(pg_stack):
    rows = keypoint_images(pg_stack.data / "points", 600)
    name = "points-spot"
    job = wait_train(pg_stack, post(pg_stack, "/api/v1/jobs/train", {
        "model": name, "task": "keypoints", "keypoint_names": ["spot"],
        "dataset": {"path": "points/items.csv", "id_column": "id", "target_columns": ["x", "y"]},
        "base": {"architecture": "vgg", "width": 16}, "input_size": 48, "resize_mode": "letterbox",
        "epochs": 20, "batch_size": 32, "optimizer": {"name": "adam", "learning_rate": 0.002}})["id"])
    version = pg_stack.http.get(pg_stack.url(f"/api/v1/models/{name}/versions/1"), timeout=10).json()
    assert version["resize_mode"] == "letterbox" and version["output_names"] == ["spot"]
    sample = rows[:60]
    score = post(pg_stack, "/api/v1/jobs/score", {"model": name, "cache": False,
                                                  "items": [{"id": r["id"], "uri": f"points/{r['image']}"}
                                                            for r in sample]})
    pg_stack.wait_job(score["id"])
    results = {r["id"]: r["outputs"] for r in pg_stack.all_results(score["id"])}
    err = [np.hypot(results[r["id"]]["spot_x"] - r["x"], results[r["id"]]["spot_y"] - r["y"]) for r in sample]
    centre = [np.hypot(r["w"] / 2 - r["x"], r["h"] / 2 - r["y"]) for r in sample]
    assert np.mean(err) < 0.4 * np.mean(centre), (np.mean(err), np.mean(centre))
    assert job["holdout_metrics"]["pixel_error"] < 0.5 * np.mean(centre)


def test_killed_worker_resumes_training_from_its_checkpoint(pg_stack, digits):
    name = f"digits-{uuid.uuid4().hex[:6]}"
    job_id = post(pg_stack, "/api/v1/jobs/train", digits_request(name, "all.csv", epochs=8,
                                                                 early_stopping=None))["id"]
    deadline = time.time() + 300
    while True:
        progress = pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["progress"]
        if progress["checkpoint_epoch"] >= 2:
            break
        assert time.time() < deadline, progress
        time.sleep(0.3)
    pg_stack.kill_worker()  # SIGKILL: the worker, its pool process and the training process
    time.sleep(1)
    pg_stack.start_worker()
    done = wait_train(pg_stack, job_id)
    assert done["progress"]["resumed_from_epoch"] >= 2
    assert done["progress"]["attempts"] == 2
    history = epochs_of(pg_stack, job_id)
    assert [e["epoch"] for e in history] == list(range(1, 9))  # no gap, no duplicate
    with session_scope(pg_stack.database_url) as s:
        assert s.scalar(select(func.count()).select_from(TrainMetric).where(TrainMetric.job_id == job_id)) == 8
