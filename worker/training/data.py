"""Training data: dataset rows -> decoded tensors (through the on-disk cache) and targets, per split."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from shared.core.config import Settings
from shared.images.datasets import DatasetSpec, assign_splits, load_dataset
from shared.images.image_cache import DecodedImageCache
from shared.images.imaging import Preprocessing
from shared.images.item_reads import Places
from shared.models import targets as target_transforms
from shared.schemas.training import DatasetRef, TrainRequest


class DataError(ValueError):
    """The data cannot be trained on (no rows, unknown labels...): the job fails, no retry."""


@dataclass
class Split:
    ids: list[str]
    x: np.ndarray  # uint8 pixels (N, H, W, 3): a quarter of float32; scaled to the input range per batch
    y: np.ndarray
    geometries: list
    raw_targets: np.ndarray | None = None  # regression/keypoints in the user's units (pixels for keypoints)


@dataclass
class TrainingData:
    splits: dict[str, Split]
    class_names: list[str] | None
    target_transform: dict
    output_names: list[str] | None
    stats: dict = field(default_factory=dict)


def dataset_spec(ref) -> DatasetSpec:
    return DatasetSpec(path=ref.path, image_column=ref.image_column, id_column=ref.id_column,
                       target_columns=list(ref.target_columns), label_column=ref.label_column)


def read_dataset(settings: Settings, spec: DatasetSpec) -> pd.DataFrame:
    """The dataset's rows from the data roots: local folders, or one manifest in the object store."""
    return load_dataset(settings.data_roots, spec, Places.of(settings))


def image_cache(settings: Settings, prep: Preprocessing) -> DecodedImageCache:
    """The machine's decoded-image cache at `prep`, reading objects as the data roots allow."""
    return DecodedImageCache(settings.data_dir / "image-cache", prep, max_pixels=settings.max_image_pixels,
                             places=Places.of(settings))


def rows_added_since(frame: pd.DataFrame, since) -> pd.DataFrame:
    """Rows of the manifests written after `since` (the previous schedule slot)."""
    written = {m: os.path.getmtime(m) for m in frame["manifest"].dropna().unique()}
    cutoff = since.timestamp()
    return frame[frame["manifest"].map(lambda m: written.get(m, 0) > cutoff)]


def _frame(req: TrainRequest, settings: Settings, parent_lineage: dict | None) -> tuple[pd.DataFrame, dict]:
    frame = read_dataset(settings, dataset_spec(req.dataset))
    if req.dataset.added_since is not None:
        frame = rows_added_since(frame, req.dataset.added_since)
    stats = {"rows": int(len(frame))}
    if req.mix_in is not None:
        ref = req.mix_in.dataset
        earlier = None
        if ref is not None:
            earlier = dataset_spec(ref)
        elif parent_lineage and parent_lineage.get("dataset"):
            earlier = dataset_spec(DatasetRef.model_validate(parent_lineage["dataset"]))
        if earlier is not None:
            old = read_dataset(settings, earlier)
            old = old[~old["item_id"].isin(set(frame["item_id"]))]
            old = old.sample(frac=req.mix_in.fraction, random_state=req.seed) if len(old) else old
            stats["mixed_in_rows"] = int(len(old))
            frame = pd.concat([frame, old], ignore_index=True)
    if "error" in frame.columns:
        bad = frame["error"].notna()
        stats["path_errors"] = int(bad.sum())
        frame = frame[~bad]
    targets = [c for c in req.dataset.target_columns if c in frame.columns]
    if targets:
        missing = frame[targets].isna().any(axis=1)
        stats["missing_targets"] = int(missing.sum())
        frame = frame[~missing]
    return frame.reset_index(drop=True), stats


def _targets(req: TrainRequest, frame: pd.DataFrame, class_names: list[str] | None) -> np.ndarray:
    if req.task == "classification":
        index = {c: i for i, c in enumerate(class_names)}
        unknown = sorted(set(frame["label"].astype(str)) - set(index))
        if unknown:
            raise DataError(f"labels not among the model's classes: {', '.join(unknown[:10])}")
        return frame["label"].astype(str).map(index).to_numpy(dtype=np.int64)
    return frame[list(req.dataset.target_columns)].to_numpy(dtype=np.float64)


def prepare(req: TrainRequest, settings: Settings, prep: Preprocessing, *, parent=None, progress=None) -> TrainingData:
    """Load, split (by item id hash, salted with the model name), decode through the cache, and
    turn targets into what the model learns."""
    frame, stats = _frame(req, settings, parent.lineage if parent is not None else None)
    if frame.empty:
        raise DataError("the dataset has no usable rows")
    frame = assign_splits(frame, salt=req.model, validation=req.splits.validation, holdout=req.splits.holdout)
    if req.task == "classification":
        found = sorted(frame["label"].astype(str).unique())
        class_names = (parent.class_names if parent is not None else None) or req.class_names or found
    else:
        class_names = None
    cache = image_cache(settings, prep)
    started = time.perf_counter()
    loaded = cache.load_many(frame["path"].tolist(), threads=settings.decode_threads, pixels=True)
    ok = np.array([entry[0] is not None for entry in loaded])
    stats.update(unreadable=int((~ok).sum()), load_seconds=round(time.perf_counter() - started, 3),
                 decode_seconds=round(cache.stats.decode_seconds, 3), cache_hits=cache.stats.hits,
                 cache_misses=cache.stats.misses)
    frame, loaded = frame[ok].reset_index(drop=True), [e for e, good in zip(loaded, ok) if good]
    y_all = _targets(req, frame, class_names)
    transform = {"kind": "none"}
    output_names = None
    if req.task == "regression":
        output_names = list(req.dataset.target_columns)
        transform = _fit_transform(req, parent, y_all[(frame["split"] == "train").to_numpy()])
    elif req.task == "keypoints":
        output_names = req.keypoint_names or [f"p{i}" for i in range(len(req.dataset.target_columns) // 2)]
    splits = {}
    for name in ("train", "validation", "holdout"):
        mask = (frame["split"] == name).to_numpy()
        rows = [e for e, m in zip(loaded, mask) if m]
        geoms = [e[1] for e in rows]
        x = np.stack([e[0] for e in rows]) if rows else np.zeros((0, prep.height, prep.width, 3), np.uint8)
        raw = y_all[mask]
        if req.task == "regression":
            y = target_transforms.forward(transform, raw).astype(np.float32)
        elif req.task == "keypoints":
            y = np.stack([_normalise_points(r, g) for r, g in zip(raw, geoms)]).astype(np.float32) if rows \
                else np.zeros((0, raw.shape[1]), np.float32)
        else:
            y = raw
        splits[name] = Split(ids=frame["item_id"][mask].tolist(), x=x, y=y, geometries=geoms,
                             raw_targets=None if req.task == "classification" else raw)
    stats["split_sizes"] = {k: len(v.ids) for k, v in splits.items()}
    if not len(splits["train"].ids) or not len(splits["validation"].ids):
        raise DataError(f"too few usable rows to train: split sizes {stats['split_sizes']}")
    return TrainingData(splits, class_names, transform, output_names, stats)


def _normalise_points(row: np.ndarray, geom) -> np.ndarray:
    xs, ys = geom.to_normalised(row[0::2], row[1::2])
    out = np.empty_like(row, dtype=np.float64)
    out[0::2], out[1::2] = xs, ys
    return out


def _fit_transform(req: TrainRequest, parent, y_train: np.ndarray) -> dict:
    if parent is not None:  # a fine-tune keeps the parent's output space
        return parent.target_transform
    kind = req.target_transform
    if kind == "standardise":
        return target_transforms.validate({"kind": kind, "mean": float(y_train.mean()),
                                           "std": float(y_train.std() or 1.0)})
    if kind == "log1p_arctan":
        return target_transforms.validate({"kind": kind, "scale": float(max(1.0, np.log1p(y_train).max()))})
    return target_transforms.validate({"kind": kind})
