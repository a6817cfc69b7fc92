"""The words requests, signatures, settings, the CLI and the training code share, each defined once here.

Pydantic fields use the `Literal` types; argparse choices, the worker's builders and error messages use the tuples
derived from them. A training recipe's words (optimizers, schedules, augmentations, the metrics early stopping
watches and the gate compares) are validated by shared/schemas/training.py when a request arrives and used by
worker/training when it runs, so neither can accept what the other refuses.
States of jobs, chunks and training runs are in `shared/core/states.py`; Celery task and queue names in
`shared/core/celery_app.py`.
"""
from __future__ import annotations

from typing import Literal, get_args

Task = Literal["regression", "classification", "keypoints", "embedding"]
TASKS: tuple[str, ...] = get_args(Task)
TrainableTask = Literal["regression", "classification", "keypoints"]  # an embedding model is imported, not trained
TRAINABLE_TASKS: tuple[str, ...] = get_args(TrainableTask)
EMBEDDING_TASK: Task = "embedding"  # the model's output is the vector; embed jobs read it, scoring refuses it

PixelScale = Literal["unit", "raw", "symmetric"]
PIXEL_SCALES: tuple[str, ...] = get_args(PixelScale)
# model input = pixel (0..255) / divisor + offset
PIXEL_SCALE_MAPS: dict[str, tuple[float, float]] = {"unit": (255.0, 0.0), "raw": (1.0, 0.0),
                                                     "symmetric": (127.5, -1.0)}

ResizeMode = Literal["stretch", "letterbox"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)

WorkerRole = Literal["worker", "maintenance"]  # workers.role: scoring and training, or the maintenance queue
WORKER_ROLES: tuple[str, ...] = get_args(WorkerRole)

ResultStatus = Literal["ok", "error"]  # results.status: the item's outputs, or the reason it has none
RESULT_STATUSES: tuple[str, ...] = get_args(ResultStatus)

Architecture = Literal["vgg", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet50", "xception"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)

# Vector indexes of similar-image search (shared/search): auto picks exact below a size, else the approximate kind.
IndexKind = Literal["auto", "exact", "ivf", "hnsw"]
ApproximateIndex = Literal["ivf", "hnsw"]
IndexMode = Literal["build", "delta"]  # a new version from every vector, or the latest one plus what came since
INDEX_MODES: tuple[str, ...] = get_args(IndexMode)

# What training learns for a regression target, inverted when scoring (shared/models/targets.py).
TargetTransformKind = Literal["none", "log1p", "standardise", "log1p_arctan"]
TARGET_TRANSFORMS: tuple[str, ...] = get_args(TargetTransformKind)

# Training recipes (worker/training/models.py builds them).
OptimizerName = Literal["adam", "adamw", "sgd", "rmsprop", "nadam", "adagrad"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
LrSchedule = Literal["constant", "cosine", "step", "exponential"]
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)

# Augmentation of training images: a switch (flip, horizontal), or a fraction from 0 (off) to MAX_AUGMENTATION of a
# turn (rotation), of the image size (zoom, translate) or of the pixel value range (contrast, brightness). The
# geometric ones would move keypoints, so keypoint models take only the others.
AugmentationName = Literal["flip", "rotation", "zoom", "contrast", "brightness", "translate"]
AUGMENTATIONS: tuple[str, ...] = get_args(AugmentationName)
SWITCH_AUGMENTATIONS: tuple[str, ...] = ("flip",)
GEOMETRIC_AUGMENTATIONS: tuple[str, ...] = ("flip", "rotation", "zoom", "translate")
MAX_AUGMENTATION = 1.0

# What Keras records each epoch: the loss and the task's one metric, each also on the validation split ("val_");
# early stopping watches one of them.
FIT_METRICS: dict[str, str] = {"regression": "mae", "classification": "accuracy", "keypoints": "mae"}
FitMonitor = Literal["val_loss", "loss", "val_mae", "mae", "val_accuracy", "accuracy"]


def fit_monitors(task: str) -> tuple[str, ...]:
    """What early stopping may watch when training a model for `task`."""
    return "val_loss", "loss", f"val_{FIT_METRICS[task]}", FIT_METRICS[task]


# Holdout metrics, in the user's units, per task (worker/training/evaluate.py); the promotion gate compares one.
HoldoutMetric = Literal["mae", "rmse", "r2", "pixel_error", "accuracy", "log_loss"]
HOLDOUT_METRICS: dict[str, tuple[str, ...]] = {"regression": ("mae", "rmse", "r2"),
                                               "classification": ("accuracy", "log_loss"),
                                               "keypoints": ("mae", "rmse", "pixel_error")}
DEFAULT_GATE_METRIC: dict[str, str] = {"regression": "mae", "classification": "accuracy", "keypoints": "pixel_error"}
LOWER_IS_BETTER: dict[str, bool] = {"mae": True, "rmse": True, "pixel_error": True, "log_loss": True,
                                    "accuracy": False, "r2": False}

# The gate's paired test on the holdout, per task and metric (worker/training/gate.py): McNemar's exact test on the
# items one model gets right and the other wrong when the metric is accuracy, else Wilcoxon's signed-rank test on
# the per-item losses behind the metric (absolute or squared error, point distance, log-loss).
GateTest = Literal["mcnemar_exact", "wilcoxon_signed_rank"]
GATE_TESTS: tuple[str, ...] = get_args(GateTest)
# Guards: figures that must not get worse beyond a tolerance, whatever the gate's metric says.
GateGuard = Literal["log_loss", "worst_class_recall", "error_p90", "shadow_large_changes"]
GATE_GUARDS: tuple[str, ...] = get_args(GateGuard)
GUARDS_OF_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("log_loss", "worst_class_recall", "shadow_large_changes"),
    "regression": ("error_p90", "shadow_large_changes"), "keypoints": ("error_p90", "shadow_large_changes")}
# The checks of a nightly crawl before a scheduled fine-tune trains on it (worker/training/crawl_check.py).
CrawlCheckName = Literal["agreement", "class_agreement", "residuals", "distribution", "holdout_duplicates",
                         "unreadable"]
CRAWL_CHECKS: tuple[str, ...] = get_args(CrawlCheckName)

# Manifests (score jobs and training datasets alike): CSV (also gzipped), TSV, or Parquet.
MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".tsv", ".parquet")


def manifest_suffix(name: str) -> str | None:
    """The manifest kind a file name ends with (lower case), or None when it is not one."""
    lowered = name.lower()
    return next((s for s in sorted(MANIFEST_SUFFIXES, key=len, reverse=True) if lowered.endswith(s)), None)


assert set(PIXEL_SCALE_MAPS) == set(PIXEL_SCALES)
assert set(SWITCH_AUGMENTATIONS) <= set(AUGMENTATIONS) and set(GEOMETRIC_AUGMENTATIONS) <= set(AUGMENTATIONS)
assert set(FIT_METRICS) == set(HOLDOUT_METRICS) == set(DEFAULT_GATE_METRIC) == set(TRAINABLE_TASKS)
assert {m for task in FIT_METRICS for m in fit_monitors(task)} == set(get_args(FitMonitor))
assert {m for metrics in HOLDOUT_METRICS.values() for m in metrics} == set(LOWER_IS_BETTER) == \
    set(get_args(HoldoutMetric))
assert all(DEFAULT_GATE_METRIC[task] in HOLDOUT_METRICS[task] for task in TRAINABLE_TASKS)
assert set(GUARDS_OF_TASK) == set(TRAINABLE_TASKS) and {g for gs in GUARDS_OF_TASK.values() for g in gs} == \
    set(GATE_GUARDS)
