"""The words requests, signatures, settings and the CLI share, each defined once here.

Pydantic fields use the `Literal` types; argparse choices and error messages use the tuples derived from them.
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

ResultStatus = Literal["ok", "error"]  # results.status: the item's outputs, or the reason it has none
RESULT_STATUSES: tuple[str, ...] = get_args(ResultStatus)

Architecture = Literal["vgg", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet50", "xception"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)

# Vector indexes of similar-image search (shared/search): auto picks exact below a size, else the approximate kind.
IndexKind = Literal["auto", "exact", "ivf", "hnsw"]
ApproximateIndex = Literal["ivf", "hnsw"]

# Manifests (score jobs and training datasets alike): CSV (also gzipped), TSV, or Parquet.
MANIFEST_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".tsv", ".parquet")


def manifest_suffix(name: str) -> str | None:
    """The manifest kind a file name ends with (lower case), or None when it is not one."""
    lowered = name.lower()
    return next((s for s in sorted(MANIFEST_SUFFIXES, key=len, reverse=True) if lowered.endswith(s)), None)


assert set(PIXEL_SCALE_MAPS) == set(PIXEL_SCALES)
