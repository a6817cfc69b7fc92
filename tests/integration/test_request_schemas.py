"""Requests are typed where they enter: through the app factory (on SQLite and PostgreSQL), a wrong key or value
anywhere in a request body is a 400 naming its field path, and nothing is stored or queued."""
from __future__ import annotations

import io

import pytest
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Job, Schedule, Sweep

TRAIN = {"model": "m", "task": "regression", "dataset": {"path": "crawl/items.csv", "target_columns": ["y"]},
         "base": {"architecture": "vgg"}, "input_size": 32}
SCHEDULE = {"name": "nightly", "cron": "0 3 * * *", "model": "m",
            "train": {**{k: v for k, v in TRAIN.items() if k != "model"},
                      "dataset": {"path": "crawl/{date:%Y-%m-%d}/items.csv", "target_columns": ["y"]}}}


def error_fields(resp) -> set[str]:
    """The field paths a 4xx names (its problems, and the error's own field where there is one)."""
    error = resp.get_json()["error"]
    return {p["field"] for p in error.get("problems", [])} | ({error["field"]} if error.get("field") else set())


def stored() -> dict[str, int]:
    with session_scope() as session:
        return {table.__tablename__: session.scalar(select(func.count()).select_from(table))
                for table in (Job, Schedule, Sweep)}


NOTHING = {"jobs": 0, "schedules": 0, "sweeps": 0}


@pytest.mark.parametrize("path, body, field", [
    ("/api/v1/jobs/train", {**TRAIN, "augmentation": {"fllip": True}}, "augmentation.fllip"),
    ("/api/v1/jobs/train", {**TRAIN, "augmentation": {"zoom": 2}}, "augmentation.zoom"),
    ("/api/v1/jobs/train", {**TRAIN, "task": "keypoints", "augmentation": {"flip": True},
                            "dataset": {"path": "x.csv", "target_columns": ["x0", "y0"]}}, "augmentation.flip"),
    ("/api/v1/jobs/train", {**TRAIN, "optimizer": {"name": "lion"}}, "optimizer.name"),
    ("/api/v1/jobs/train", {**TRAIN, "optimizer": {"schedule": "linear"}}, "optimizer.schedule"),
    ("/api/v1/jobs/train", {**TRAIN, "freeze": {"unfreez_top": 3}}, "freeze.unfreez_top"),
    ("/api/v1/jobs/train", {**TRAIN, "early_stopping": {"monitor": "val_accuracy"}}, "early_stopping.monitor"),
    ("/api/v1/jobs/train", {**TRAIN, "gate": {"metric": "accuracy"}}, "gate.metric"),
    ("/api/v1/jobs/train", {**TRAIN, "gate": {"metric": "f1"}}, "gate.metric"),
    ("/api/v1/schedules", {**SCHEDULE, "train": {**SCHEDULE["train"], "augmentatoin": {}}}, "train.augmentatoin"),
    ("/api/v1/schedules", {**SCHEDULE, "train": {**SCHEDULE["train"], "optimizer": {"name": "lion"}}},
     "train.optimizer.name"),
    ("/api/v1/schedules", {**SCHEDULE, "gate": {"metric": "accuracy"}}, "gate.metric"),
    ("/api/v1/sweeps", {"base": TRAIN, "grid": {"optimizer.nme": ["adam", "sgd"]}}, "grid.optimizer.nme"),
    ("/api/v1/sweeps", {"base": TRAIN, "grid": {"optimizer.name": ["adam", "lion"]}}, "grid.optimizer.name"),
    ("/api/v1/sweeps", {"base": {**TRAIN, "augmentation": {"fllip": True}}, "grid": {"epochs": [1, 2]}},
     "base.augmentation.fllip"),
    ("/api/v1/catalogs/shop/indexes", {"mode": "build", "colour": "red"}, "colour"),
    ("/api/v1/catalogs/shop/indexes", {"mode": "rebuild"}, "mode"),
    ("/api/v1/catalogs/shop/indexes", {"params": {"kind": "annoy"}}, "params.kind"),
    ("/api/v1/catalogs/shop/deletions", {"ids": "item-1"}, "ids"),
    ("/api/v1/catalogs/shop/deletions", {"ids": ["item-1", ""]}, "ids.1"),
])
def test_a_wrong_key_or_value_is_a_400_naming_its_path_and_nothing_is_stored(client, path, body, field):
    resp = client.post(path, json=body)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert field in error_fields(resp), resp.get_json()
    assert resp.get_json()["error"]["type"] == "InvalidRequest"
    assert stored() == NOTHING


def test_the_same_train_request_spelled_right_is_accepted(client):
    resp = client.post("/api/v1/jobs/train", json={**TRAIN, "augmentation": {"flip": True},
                                                   "gate": {"metric": "rmse"},
                                                   "early_stopping": {"monitor": "val_mae"}})
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["request"]["augmentation"]["flip"] is True
    assert stored()["jobs"] == 1


def test_an_index_request_with_a_bad_mode_is_refused_by_its_schema(client):
    resp = client.post("/api/v1/catalogs/shop/indexes", json={"mode": "rebuild"})
    assert resp.status_code == 400 and "Input should be 'build' or 'delta'" in resp.get_json()["error"]["message"]


@pytest.mark.parametrize("form, field", [
    ({"task": "segmentation"}, "task"),
    ({"target_transform": '{"kind": "cube"}'}, "target_transform"),
    ({"target_transform": '{"kind": "standardise", "mean": 1}'}, "target_transform.standardise.std"),
    ({"target_transform": "standardise"}, "target_transform.standardise.mean"),
    ({"pixel_scale": "percent"}, "pixel_scale"),
    ({"colour": "red"}, "colour"),
])
def test_a_bad_model_import_form_is_a_400_naming_its_field_and_stages_nothing(client, configured, form, field):
    data = {"name": "imported", "task": "regression", "input_size": "32", **form,
            "file": (io.BytesIO(b"not read"), "m.keras")}
    resp = client.post("/api/v1/models", data=data, content_type="multipart/form-data")
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert field in error_fields(resp), resp.get_json()
    assert stored() == NOTHING
    assert not [p for p in configured.model_store.rglob("*") if p.is_file()]


def test_a_score_upload_form_with_an_unknown_field_is_a_400_and_stages_nothing(client, configured):
    data = {"model": "m", "colour": "red", "files": [(io.BytesIO(b"x"), "a.jpg")]}
    resp = client.post("/api/v1/jobs/score", data=data, content_type="multipart/form-data")
    assert resp.status_code == 400 and "colour" in error_fields(resp), resp.get_json()
    assert stored() == NOTHING
    assert not [p for p in configured.upload_dir.rglob("*") if p.is_file()]
