"""A trained version's drift reference: its outputs on its own validation and holdout images (data like its training
data that it did not fit), summarized as shared/models/drift.py says and recorded with the version, so each score
job of the version can say how far its outputs moved (shared/services/drift.py)."""
from __future__ import annotations

from shared.core.db import session_scope
from shared.core.tables import ModelVersion
from shared.models import drift as drift_stats
from shared.models.outputs import interpret
from shared.services import drift
from shared.services.model_registry import signature_of
from worker.training.data import TrainingData
from worker.training.evaluate import predict

REFERENCE_SPLITS = ("validation", "holdout")


def reference_distribution(version: ModelVersion, model, data: TrainingData) -> dict:
    """The summary of the model's outputs, in the user's units as scoring writes them, on the unseen splits."""
    sig = signature_of(version)
    rows: list[dict] = []
    for name in REFERENCE_SPLITS:
        split = data.splits.get(name)
        if split is None or not len(split.ids):
            continue
        raw = predict(model, split.x, sig.pixel_scale)
        rows += interpret(sig.task, raw, output_names=sig.output_names, class_names=sig.class_names,
                          target_transform=sig.target_transform, geometries=split.geometries)
    return drift_stats.summarize(sig.task, rows)


def record_training_reference(version: ModelVersion, model, data: TrainingData) -> None:
    """The version's reference recorded (once: a later attempt that registered the same version changes nothing)."""
    distribution = reference_distribution(version, model, data)
    if not distribution["count"]:
        return
    with session_scope() as session:
        drift.record_reference(session, version.id, distribution)
