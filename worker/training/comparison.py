"""The evaluation phase of a training run: which models are measured on which data, and what the gate decides.

The candidate is measured on the run's fixed holdout (split by item id, salted with the model name); with a gate,
the production version it would replace is loaded from the registry and answers the same holdout, the gate decides
on both models' answers item by item (gate.py: a paired test and guards), and both score a sample of the whole
catalog for the shadow diff, whose share of large changes is one of the guards. A production version that takes a
different input is never compared automatically: the gate keeps it. The arithmetic (batched predictions, user
units, metrics, the diff's report) is evaluate.py's and the rule gate.py's; this module picks the models and the
data and touches the database and the model files.
"""
from __future__ import annotations

import numpy as np

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.errors import NotFound
from shared.core.tables import ModelVersion
from shared.images.imaging import Preprocessing
from shared.models.model_inspect import load_keras_safely
from shared.schemas.training import TrainRequest
from shared.services.model_files import version_file
from shared.services.model_registry import resolve
from worker.training import evaluate, gate
from worker.training.data import TrainingData


def holdout_truth(task: str, data: TrainingData):
    holdout = data.splits["holdout"]
    return holdout.y if task == "classification" else holdout.raw_targets


def holdout_answers(task: str, model, data: TrainingData, pixel_scale: str, target_transform: dict) -> np.ndarray:
    """`model`'s answers on the holdout, in the user's units."""
    holdout = data.splits["holdout"]
    return evaluate.to_user_units(task, evaluate.predict(model, holdout.x, pixel_scale), target_transform,
                                  holdout.geometries)


def measure(task: str, model, data: TrainingData, pixel_scale: str, target_transform: dict) -> dict:
    """`model`'s metrics on the holdout, in the user's units."""
    predicted = holdout_answers(task, model, data, pixel_scale, target_transform)
    return evaluate.holdout_metrics(task, predicted, holdout_truth(task, data),
                                    train_truth=data.splits["train"].raw_targets)


def evaluate_holdout(task: str, model, data: TrainingData, prep: Preprocessing) -> dict:
    """The candidate's holdout metrics."""
    return measure(task, model, data, prep.pixel_scale, data.target_transform)


def production_version(name: str) -> ModelVersion | None:
    """The version the name's production alias points at (detached), or None."""
    with session_scope() as session:
        try:
            production = resolve(session, name)
        except NotFound:
            return None
        session.expunge(production)
        return production


def same_input(production, signature: dict) -> bool:
    keys = ("input_height", "input_width", "resize_mode", "pixel_scale")
    return tuple(getattr(production, k) for k in keys) == tuple(signature[k] for k in keys)


def shadow_sample(data: TrainingData, size: int, seed: int) -> tuple[list[str], np.ndarray | None, list]:
    """(ids, uint8 pixels, geometries) of up to `size` items drawn from every split, the same for the same seed."""
    pool = [(split, i) for split in data.splits.values() for i in range(len(split.ids))]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=min(size, len(pool)), replace=False) if pool else []
    if not len(pick):
        return [], None, []
    chosen = [pool[i] for i in pick]
    return ([split.ids[i] for split, i in chosen], np.stack([split.x[i] for split, i in chosen]),
            [split.geometries[i] for split, i in chosen])


def compare_with_production(req: TrainRequest, model, data: TrainingData, signature: dict, metrics: dict,
                            production, settings: Settings) -> dict:
    """The gate's decision (worker/training/gate.py) over the candidate's and production's answers on the same
    holdout, with a shadow diff of both on a sample of the catalog. `production`: production_version(req.model)."""
    task = req.task
    result: dict = {"production": None, "candidate_metrics": metrics}
    if production is None:
        result["gate"] = gate.decide(task, req.gate, None, None)
        return result
    result["production"] = f"{production.name}@{production.version}"
    if not same_input(production, signature):
        result["gate"] = {"decision": "kept", "reason": "production takes a different input; compare by hand"}
        return result
    prod_model = load_keras_safely(str(version_file(production, settings)))
    scale, truth = signature["pixel_scale"], holdout_truth(task, data)
    candidate = holdout_answers(task, model, data, scale, signature["target_transform"])
    answers = holdout_answers(task, prod_model, data, scale, production.target_transform)
    result["production_metrics"] = evaluate.holdout_metrics(task, answers, truth,
                                                            train_truth=data.splits["train"].raw_targets)
    ids, x, geoms = shadow_sample(data, req.shadow_sample, req.seed)
    if ids:
        cand = evaluate.to_user_units(task, evaluate.predict(model, x, scale), signature["target_transform"], geoms)
        prod = evaluate.to_user_units(task, evaluate.predict(prod_model, x, scale), production.target_transform,
                                      geoms)
        result["shadow"] = evaluate.shadow_diff(task, ids, cand, prod, class_names=signature["class_names"],
                                                large_change=gate.large_change_threshold(task, answers, truth))
    result["gate"] = gate.decide(task, req.gate, truth, candidate, answers, result.get("shadow"))
    return result
