"""shared/schemas: every request body typed to its leaves, its words from shared/core/vocab.py, and a wrong key or
value anywhere a ValidationError naming its field path (no servers)."""
from __future__ import annotations

import ast
import inspect
import time
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from shared.core import vocab
from shared.schemas import catalogs, jobs, models, training

ROOT = Path(__file__).resolve().parents[3]
TRAIN = {"model": "m", "task": "regression", "dataset": {"path": "x.csv", "target_columns": ["y"]},
         "base": {"architecture": "vgg"}, "input_size": 32}
SCHEDULE = {"name": "nightly", "cron": "0 3 * * *", "model": "m",
            "train": {**{k: v for k, v in TRAIN.items() if k != "model"},
                      "dataset": {"path": "crawl/{date:%Y-%m-%d}/items.csv", "target_columns": ["y"]}}}


def problems(model: type[BaseModel], body) -> dict[str, str]:
    """{dotted field path: message} of the errors validating `body`, as web/errors.py names them."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in caught.value.errors()}


# ------------------------------------------------------------------------------------------- the whole package

def _request_models() -> list[type[BaseModel]]:
    found = []
    for module in (catalogs, jobs, models, training):
        found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if issubclass(obj, BaseModel) and obj.__module__.startswith("shared.")]
    return found


def _free_form(annotation) -> list[str]:
    """What in a field's type lets an unchecked value through: dict, Any, a bare list, object."""
    if annotation in (dict, list, typing.Any, object) or typing.get_origin(annotation) is dict:
        return [repr(annotation)]
    return [bad for arg in typing.get_args(annotation) for bad in _free_form(arg)]


def test_every_request_model_is_typed_to_its_leaves_and_refuses_unknown_keys():
    seen, bad = set(), {}
    todo = _request_models()
    assert len(todo) > 20
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model.model_config.get("extra") == "forbid", model
        for name, field in model.model_fields.items():
            if model is training.SweepRequest and name == "grid":  # setting paths -> scalars, checked per point
                continue
            if _free_form(field.annotation):
                bad[f"{model.__name__}.{name}"] = _free_form(field.annotation)
            todo += [arg for arg in (field.annotation, *typing.get_args(field.annotation))
                     if isinstance(arg, type) and issubclass(arg, BaseModel)]
    assert bad == {}


def test_schemas_import_core_images_models_and_search_but_never_services():
    imported = set()
    for path in sorted((ROOT / "shared" / "schemas").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {name.split(".")[1] for name in imported if name.startswith("shared.")}
    assert ours <= {"core", "images", "models", "search", "schemas"}, ours
    assert not any(name.split(".")[0] in ("web", "worker") for name in imported)


# ------------------------------------------------------------------------------------------- train requests

def test_a_misspelled_augmentation_key_names_its_path():
    assert problems(training.TrainRequest, {**TRAIN, "augmentation": {"fllip": True}}) == {
        "augmentation.fllip": "Extra inputs are not permitted"}


def test_augmentation_has_one_field_per_word_of_the_vocabulary_with_its_range():
    assert tuple(training.Augmentation.model_fields) == vocab.AUGMENTATIONS
    everything = {name: True if name in vocab.SWITCH_AUGMENTATIONS else vocab.MAX_AUGMENTATION
                  for name in vocab.AUGMENTATIONS}
    assert training.Augmentation.model_validate(everything).asked() == everything
    assert training.Augmentation().asked() == {}
    fraction = next(a for a in vocab.AUGMENTATIONS if a not in vocab.SWITCH_AUGMENTATIONS)
    for value in (vocab.MAX_AUGMENTATION + 0.5, -0.1, True, "0.1"):
        assert f"augmentation.{fraction}" in problems(training.TrainRequest,
                                                      {**TRAIN, "augmentation": {fraction: value}})
    assert "augmentation.flip" in problems(training.TrainRequest, {**TRAIN, "augmentation": {"flip": "yes"}})


@pytest.mark.parametrize("name", vocab.GEOMETRIC_AUGMENTATIONS)
def test_keypoint_models_refuse_geometric_augmentation_naming_it(name):
    keypoints = {**TRAIN, "task": "keypoints", "dataset": {"path": "x.csv", "target_columns": ["x0", "y0"]}}
    value = True if name in vocab.SWITCH_AUGMENTATIONS else 0.1
    found = problems(training.TrainRequest, {**keypoints, "augmentation": {"contrast": 0.1, name: value}})
    assert list(found) == [f"augmentation.{name}"] and "geometric" in found[f"augmentation.{name}"]
    assert training.TrainRequest.model_validate({**keypoints, "augmentation": {"contrast": 0.1, "brightness": 0.2}})
    assert training.TrainRequest.model_validate({**TRAIN, "augmentation": {name: value}})  # regression may


@pytest.mark.parametrize("body, field", [
    ({"optimizer": {"name": "lion"}}, "optimizer.name"),
    ({"optimizer": {"schedule": "linear"}}, "optimizer.schedule"),
    ({"optimizer": {"name": "adam", "lr": 0.1}}, "optimizer.lr"),
    ({"freeze": {"head_epochs": 2, "unfreez_top": 3}}, "freeze.unfreez_top"),
    ({"freeze": {"fine_tune_lr_factor": 2}}, "freeze.fine_tune_lr_factor"),
    ({"early_stopping": {"monitor": "val_f1"}}, "early_stopping.monitor"),
    ({"early_stopping": {"monitor": "val_accuracy"}}, "early_stopping.monitor"),  # a regression records mae
    ({"gate": {"metric": "bogus"}}, "gate.metric"),
    ({"gate": {"metric": "accuracy"}}, "gate.metric"),  # a regression's holdout has no accuracy
    ({"target_transform": "sqrt"}, "target_transform"),
    ({"splits": {"holdout": 0.1, "test": 0.1}}, "splits.test"),
])
def test_a_wrong_recipe_key_or_value_names_its_path(body, field):
    assert field in problems(training.TrainRequest, {**TRAIN, **body})


@pytest.mark.parametrize("task", vocab.TRAINABLE_TASKS)
def test_each_task_takes_the_monitors_and_gate_metrics_the_vocabulary_gives_it(task):
    columns = {"label_column": "label"} if task == "classification" else {"target_columns": ["x0", "y0"]}
    body = {**TRAIN, "task": task, "dataset": {"path": "x.csv", **columns}}
    for monitor in vocab.fit_monitors(task):
        assert training.TrainRequest.model_validate({**body, "early_stopping": {"monitor": monitor}})
    for metric in vocab.HOLDOUT_METRICS[task]:
        assert training.TrainRequest.model_validate({**body, "gate": {"metric": metric}})
    others = set(typing.get_args(vocab.HoldoutMetric)) - set(vocab.HOLDOUT_METRICS[task])
    for metric in others:
        assert "gate.metric" in problems(training.TrainRequest, {**body, "gate": {"metric": metric}})


def test_cross_field_problems_name_the_field_at_fault():
    assert "dataset.label_column" in problems(training.TrainRequest, {**TRAIN, "task": "classification"})
    assert "input_size" in problems(training.TrainRequest, {**TRAIN, "input_size": None})


# ------------------------------------------------------------------------------------------- sweeps

def test_a_sweep_grid_over_an_unknown_path_names_it():
    assert list(problems(training.SweepRequest, {"base": TRAIN, "grid": {"optimizer.nme": ["adam"]}})) == [
        "grid.optimizer.nme"]
    assert "grid.augmentation" in problems(training.SweepRequest, {"base": TRAIN, "grid": {"augmentation": [1]}})


def test_every_grid_point_is_validated_as_a_train_request_before_any_job_is_built():
    found = problems(training.SweepRequest, {"base": TRAIN, "grid": {"optimizer.name": ["adam", "lion"],
                                                                     "epochs": [1, 2]}})
    assert list(found) == ["grid.optimizer.name"] and "optimizer.name='lion'" in found["grid.optimizer.name"]
    assert "grid.augmentation.zoom" in problems(training.SweepRequest,
                                                {"base": TRAIN, "grid": {"augmentation.zoom": [0.1, 3]}})
    assert "grid.optimizer.name.0" in problems(training.SweepRequest,
                                               {"base": TRAIN, "grid": {"optimizer.name": [{"adam": 1}]}})


def test_a_sweep_yields_one_validated_train_request_per_point():
    sweep = training.SweepRequest.model_validate({"base": TRAIN, "grid": {
        "optimizer.name": ["adam", "sgd"], "early_stopping.patience": [2, 4]}})
    requests = sweep.train_requests()
    assert [(r.early_stopping.patience, r.optimizer.name) for r in requests] == [  # keys in sorted order
        (2, "adam"), (2, "sgd"), (4, "adam"), (4, "sgd")]
    assert all(isinstance(r, training.TrainRequest) for r in requests)
    assert sweep.base_spec() == TRAIN  # what the client left out stays out


def test_a_huge_grid_is_counted_and_refused_before_any_point_is_built():
    grid = {key: list(range(1, 21)) for key in ("seed", "epochs", "batch_size", "shadow_sample",
                                                "freeze.head_epochs")}
    started = time.monotonic()
    found = problems(training.SweepRequest, {"base": TRAIN, "grid": grid})
    assert time.monotonic() - started < 0.5
    assert found == {"grid": f"the grid has {20 ** 5} points; at most {training.MAX_SWEEP_POINTS}"}


# ------------------------------------------------------------------------------------------- schedules

def test_a_schedule_names_a_misspelled_train_key_under_train():
    assert list(problems(training.ScheduleRequest, {**SCHEDULE, "train": {**SCHEDULE["train"],
                                                                          "augmentatoin": {}}})) == [
        "train.augmentatoin"]
    assert "train.augmentation.fllip" in problems(training.ScheduleRequest, {
        **SCHEDULE, "train": {**SCHEDULE["train"], "augmentation": {"fllip": True}}})


def test_a_schedule_keeps_its_path_patterns_and_added_since_last_run():
    train = {**SCHEDULE["train"], "dataset": {"path": "crawl/*/items.csv", "target_columns": ["y"],
                                              "added_since_last_run": True}}
    req = training.ScheduleRequest.model_validate({**SCHEDULE, "train": train, "gate": {"metric": "rmse"}})
    assert req.train_template() == train and req.train.model is None
    assert training.ScheduleRequest.model_validate(SCHEDULE).train_template()["dataset"]["path"] == \
        "crawl/{date:%Y-%m-%d}/items.csv"
    for path in ("x/{date.year:>999999999}.csv", "x/{today}.csv", "x/{date!r}.csv", "x/{date:%Y"):
        bad = {**SCHEDULE["train"], "dataset": {"path": path, "target_columns": ["y"]}}
        assert list(problems(training.ScheduleRequest, {**SCHEDULE, "train": bad})) == ["train.dataset.path"]


def test_a_schedule_gate_names_a_metric_its_task_does_not_measure():
    assert list(problems(training.ScheduleRequest, {**SCHEDULE, "gate": {"metric": "pixel_error"}})) == [
        "gate.metric"]
    assert "train.gate.metric" in problems(training.ScheduleRequest, {
        **SCHEDULE, "train": {**SCHEDULE["train"], "gate": {"metric": "log_loss"}}})


# ------------------------------------------------------------------------------------------- catalogs

@pytest.mark.parametrize("body, field", [
    ({"colour": "red"}, "colour"),
    ({"mode": "rebuild"}, "mode"),
    ({"mode": 3}, "mode"),
    ({"space": ["a"]}, "space"),
    ({"params": {"kind": "annoy"}}, "params.kind"),
    ({"params": [1]}, "params"),
])
def test_a_bad_index_request_names_its_field(body, field):
    assert field in problems(catalogs.IndexRequest, body)


def test_an_index_build_takes_the_servers_exact_below_unless_it_sets_its_own():
    assert catalogs.IndexRequest.model_validate({}).build_params(500).exact_below == 500
    own = catalogs.IndexRequest.model_validate({"params": {"kind": "hnsw", "exact_below": 7}}).build_params(500)
    assert (own.kind, own.exact_below) == ("hnsw", 7)
    assert catalogs.IndexRequest.model_validate({"mode": "delta"}).build_params(500) is None


@pytest.mark.parametrize("body, field", [
    ({"ids": "item-1"}, "ids"), ({"ids": {"a": 1}}, "ids"), ({"ids": []}, "ids"), ({"ids": ["a", ""]}, "ids.1"),
    ({"ids": [3]}, "ids.0"), ({"ids": ["a"], "all": True}, "all"), ({}, "ids"),
])
def test_a_bad_deletion_request_names_its_field(body, field):
    assert field in problems(catalogs.DeletionRequest, body)


# ------------------------------------------------------------------------------------------- models, jobs

FORM = {"name": "m", "task": "regression", "input_size": 32}


@pytest.mark.parametrize("body, field", [
    ({"task": "segmentation"}, "task"),
    ({"resize_mode": "crop"}, "resize_mode"),
    ({"pixel_scale": "percent"}, "pixel_scale"),
    ({"target_transform": {"kind": "cube"}}, "target_transform"),
    ({"target_transform": {"kind": "standardise", "mean": 1}}, "target_transform.standardise.std"),
    ({"target_transform": {"kind": "standardise", "mean": 1, "std": 0}}, "target_transform.standardise.std"),
    ({"target_transform": {"kind": "log1p", "scale": 2}}, "target_transform.log1p.scale"),
    ({"colour": "red"}, "colour"),
])
def test_a_bad_model_import_form_names_its_field(body, field):
    assert field in problems(models.ModelImportForm, {**FORM, **body})


def test_a_model_import_form_takes_every_target_transform_kind():
    for transform in ({"kind": "none"}, {"kind": "log1p"}, {"kind": "standardise", "mean": 2.0, "std": 0.5},
                      {"kind": "log1p_arctan", "scale": 3.0}):
        form = models.ModelImportForm.model_validate({**FORM, "target_transform": transform})
        assert form.target_transform.model_dump() == transform
    assert models.ModelImportForm.model_validate(FORM).target_transform.model_dump() == {"kind": "none"}


def test_the_score_upload_form_is_typed():
    assert jobs.ScoreUploadForm.model_validate({"model": "m@2", "cache": "false"}).cache is False
    assert "model" in problems(jobs.ScoreUploadForm, {})
    assert "cache" in problems(jobs.ScoreUploadForm, {"model": "m", "cache": "maybe"})
    assert "colour" in problems(jobs.ScoreUploadForm, {"model": "m", "colour": "red"})

