"""The promotion gate and the crawl check on real models and scikit-learn's digits: the gate's decision on a really
trained production model against candidates one image better, as accurate but badly calibrated, and clearly better;
a night's increment with shuffled labels quarantined before training, a clean one trained (through the API)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from shared.images.imaging import scale_pixels
from shared.schemas.training import TrainRequest
from worker.training import comparison
from worker.training.data import Split, TrainingData

keras = pytest.importorskip("keras")

HOLDOUT = 270


def digits_pixels():
    from sklearn.datasets import load_digits

    d = load_digits()
    small = (d.images * 255 / 16).astype(np.uint8)
    x = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)  # 16 x 16
    return np.repeat(x[..., None], 3, axis=3), d.target.astype(np.int64)


def split(x, y, prefix: str) -> Split:
    return Split(ids=[f"{prefix}-{i}" for i in range(len(y))], x=x, y=y, geometries=[None] * len(y))


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """A small CNN really trained on digits (all but the last 270), saved as a registry version would be; the
    holdout is the last 270."""
    x, y = digits_pixels()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(scale_pixels(x[:-HOLDOUT].astype(np.float32), "unit"), y[:-HOLDOUT], epochs=4, batch_size=64,
              verbose=0)
    path = tmp_path_factory.mktemp("gate") / "model.keras"
    model.save(path)
    version = SimpleNamespace(name="digits-gate", version=1, input_height=16, input_width=16, resize_mode="stretch",
                              pixel_scale="unit", path=str(path), target_transform={"kind": "none"})
    data = TrainingData({"train": split(x[:-HOLDOUT], y[:-HOLDOUT], "t"), "validation": split(x[:10], y[:10], "v"),
                         "holdout": split(x[-HOLDOUT:], y[-HOLDOUT:], "h")}, [str(i) for i in range(10)],
                        {"kind": "none"}, None)
    return model, version, data


class Candidate:
    """Production's model with its answers changed by `change(pixels, probabilities)`, batch by batch."""

    def __init__(self, model, change):
        self.model, self.change = model, change

    def __call__(self, pixels, training=False):
        return self.change(np.asarray(pixels), np.array(self.model(pixels, training=False)))


def decide(production, candidate) -> dict:
    _, version, data = production
    req = TrainRequest.model_validate({
        "model": "digits-gate", "task": "classification", "input_size": 16, "shadow_sample": 200,
        "dataset": {"path": "digits/all.csv", "label_column": "label"}, "base": {"version": "digits-gate"},
        "gate": {}})
    signature = {"pixel_scale": "unit", "target_transform": {"kind": "none"}, "class_names": data.class_names,
                 "input_height": 16, "input_width": 16, "resize_mode": "stretch"}
    metrics = comparison.evaluate_holdout("classification", candidate, data,
                                          SimpleNamespace(pixel_scale="unit"))
    return comparison.compare_with_production(req, candidate, data, signature, metrics, version)


def test_a_candidate_one_image_better_on_270_is_kept_as_not_significant(production):
    model, _, data = production
    holdout = data.splits["holdout"]
    picked = np.asarray(model(scale_pixels(holdout.x.astype(np.float32), "unit"))).argmax(1)
    missed = int(np.nonzero(picked != holdout.y)[0][0])
    fixed = scale_pixels(holdout.x[missed:missed + 1].astype(np.float32), "unit")[0]

    def right_on_one(pixels, probs):
        for i in np.nonzero((pixels == fixed).all(axis=(1, 2, 3)))[0]:
            probs[i] = np.eye(10)[holdout.y[missed]] * 0.98 + 0.002
        return probs

    result = decide(production, Candidate(model, right_on_one))
    decision = result["gate"]
    assert result["candidate_metrics"]["n"] == HOLDOUT
    assert decision["improvement"] == pytest.approx(1 / HOLDOUT)  # what a bare difference promoted
    assert (decision["test"]["candidate_only_right"], decision["test"]["production_only_right"]) == (1, 0)
    assert decision["decision"] == "kept" and "not significant at 95%" in decision["reason"]
    assert all(g["passed"] for g in decision["guards"])


def test_a_candidate_as_accurate_with_a_much_worse_log_loss_is_kept_naming_the_guard(production):
    def flattened(_, probs):
        soft = probs ** 0.15
        return soft / soft.sum(1, keepdims=True)

    result = decide(production, Candidate(production[0], flattened))
    decision = result["gate"]
    assert result["candidate_metrics"]["accuracy"] == result["production_metrics"]["accuracy"]
    assert result["candidate_metrics"]["log_loss"] > 2 * result["production_metrics"]["log_loss"]
    [guard] = [g for g in decision["guards"] if g["name"] == "log_loss"]
    assert not guard["passed"] and guard["tolerance"] == 0.1
    assert decision["decision"] == "kept" and "guard log_loss" in decision["reason"]


# --------------------------------------------------------------------------------------------- through the API


def post(stack, body, expect=202):
    resp = stack.http.post(stack.url("/api/v1/jobs/train"), json=body, timeout=120)
    assert resp.status_code == expect, resp.text
    return resp.json()


def digits_request(name, manifest, **over):
    body = {"model": name, "task": "classification", "input_size": 16, "epochs": 8, "batch_size": 32,
            "dataset": {"path": f"digits/{manifest}", "id_column": "id", "label_column": "label"},
            "base": {"architecture": "vgg", "width": 8}, "optimizer": {"name": "adam", "learning_rate": 0.003},
            "splits": {"validation": 0.1, "holdout": 0.15}}
    body.update(over)
    return body


def test_a_clearly_better_candidate_is_promoted(pg_stack, digits):
    name = f"gate-{uuid.uuid4().hex[:6]}"
    weak = pg_stack.wait_job(post(pg_stack, digits_request(name, "all.csv", epochs=1, optimizer={
        "name": "sgd", "learning_rate": 1e-5}))["id"], timeout=300, poll=1.0)
    assert weak["status"] == "succeeded", weak
    strong = pg_stack.wait_job(post(pg_stack, digits_request(name, "all.csv", gate={"min_improvement": 0.05}))["id"],
                               timeout=300, poll=1.0)
    assert strong["status"] == "succeeded", strong
    decision = strong["comparison"]["gate"]
    assert decision["decision"] == "promoted", decision
    assert decision["test"]["name"] == "mcnemar_exact" and decision["test"]["p_value"] < 1e-6
    assert decision["test"]["n"] == strong["comparison"]["candidate_metrics"]["n"] > 200
    assert {g["name"] for g in decision["guards"]} == {"log_loss", "worst_class_recall", "shadow_large_changes"}
    assert strong["model"]["result"] == f"{name}@2"
    versions = pg_stack.http.get(pg_stack.url(f"/api/v1/models/{name}/versions"), timeout=10).json()["versions"]
    assert [v["aliases"] for v in versions] == [[], ["production"]]  # version 1, version 2


def write_increment(folder, rows: pd.DataFrame, file: str, shuffle: bool) -> None:
    rows = rows.copy()
    if shuffle:  # a shifted or shuffled label column: every label from another row
        rows["label"] = np.roll(rows["label"].to_numpy(), 7)
    rows.to_csv(folder / file, index=False)


def test_an_increment_with_shuffled_labels_is_quarantined_before_training_and_a_clean_one_trains(pg_stack, digits):
    name = f"crawl-{uuid.uuid4().hex[:6]}"
    base = pg_stack.wait_job(post(pg_stack, digits_request(name, "first-night.csv"))["id"], timeout=300, poll=1.0)
    assert base["status"] == "succeeded" and base["holdout_metrics"]["accuracy"] > 0.8, base
    frame = pd.read_csv(digits / "all.csv", dtype=str)
    write_increment(digits, frame.iloc[900:1350], f"{name}-shuffled.csv", shuffle=True)
    write_increment(digits, frame.iloc[1350:], f"{name}-clean.csv", shuffle=False)
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()

    def increment(file):
        body = digits_request(name, file, base={"version": name}, epochs=3, gate={})
        body["dataset"]["added_since"] = since  # what a schedule with added_since_last_run sets
        return pg_stack.wait_job(post(pg_stack, body)["id"], timeout=300, poll=1.0)

    shuffled = increment(f"{name}-shuffled.csv")
    assert shuffled["status"] == "failed", shuffled
    report = shuffled["crawl_check"]
    assert report["quarantined"] and report["rows"] == 450
    agreement = next(c for c in report["checks"] if c["name"] == "agreement")
    assert agreement["value"] < 0.3 < agreement["holdout_accuracy"] - 0.25 and not agreement["passed"]
    assert "agreement" in shuffled["error"] and "nothing trained" in shuffled["error"]
    epochs = pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{shuffled['id']}/epochs"), timeout=10).json()
    assert epochs["epochs"] == [] and shuffled["model"]["result"] is None

    clean = increment(f"{name}-clean.csv")
    assert clean["status"] == "succeeded", (clean["error"], clean["crawl_check"])
    assert not clean["crawl_check"]["quarantined"], clean["crawl_check"]
    assert {c["name"] for c in clean["crawl_check"]["checks"]} == {
        "agreement", "class_agreement", "distribution", "holdout_duplicates", "unreadable"}
    assert clean["model"]["result"] == f"{name}@2" and "gate" in clean["comparison"]
