"""Training data: dataset rows -> decoded pixels (through the on-disk cache, into a pixel file per split on the
worker's disk: worker/training/pixel_files.py) and targets, per split. Memory holds the rows and targets, never the
dataset's pixels."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.core.config import Settings
from shared.images.datasets import DatasetSpec, assign_splits, load_dataset
from shared.images.image_cache import DecodedImageCache
from shared.images.imaging import Preprocessing
from shared.images.item_reads import Places
from shared.models import targets as target_transforms
from shared.schemas.training import DatasetRef, TrainRequest
from worker.training.pixel_files import PixelFile, PixelWriter

SPLITS = ("train", "validation", "holdout")
DECODE_BLOCK = 512  # rows decoded at a time: the most pixels prepare holds


class DataError(ValueError):
    """The data cannot be trained on (no rows, unknown labels...): the job fails, no retry."""


@dataclass
class Split:
    ids: list[str]
    x: PixelFile | np.ndarray  # uint8 pixels (N, H, W, 3), read by index; scaled to the input range per batch
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


def prepare(req: TrainRequest, settings: Settings, prep: Preprocessing, *, folder: Path, parent=None) -> TrainingData:
    """Load, split (by item id hash, salted with the model name), decode through the cache into a pixel file per
    split in `folder` (the attempt's workspace: pixel_files.workspace), and turn targets into what the model learns."""
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
    ok, geometries, pixels = decode_into_files(cache, frame, folder, (prep.height, prep.width, 3),
                                               threads=settings.decode_threads)
    stats.update(unreadable=int((~ok).sum()), load_seconds=round(time.perf_counter() - started, 3),
                 decode_seconds=round(cache.stats.decode_seconds, 3), cache_hits=cache.stats.hits,
                 cache_misses=cache.stats.misses)
    frame, geometries = frame[ok].reset_index(drop=True), [g for g, good in zip(geometries, ok) if good]
    y_all = _targets(req, frame, class_names)
    transform = {"kind": "none"}
    output_names = None
    if req.task == "regression":
        output_names = list(req.dataset.target_columns)
        transform = _fit_transform(req, parent, y_all[(frame["split"] == "train").to_numpy()])
    elif req.task == "keypoints":
        output_names = req.keypoint_names or [f"p{i}" for i in range(len(req.dataset.target_columns) // 2)]
    splits = {}
    for name in SPLITS:
        mask = (frame["split"] == name).to_numpy()
        geoms = [g for g, m in zip(geometries, mask) if m]
        raw = y_all[mask]
        if req.task == "regression":
            y = target_transforms.forward(transform, raw).astype(np.float32)
        elif req.task == "keypoints":
            y = np.stack([_normalise_points(r, g) for r, g in zip(raw, geoms)]).astype(np.float32) if geoms \
                else np.zeros((0, raw.shape[1]), np.float32)
        else:
            y = raw
        splits[name] = Split(ids=frame["item_id"][mask].tolist(), x=pixels[name], y=y, geometries=geoms,
                             raw_targets=None if req.task == "classification" else raw)
    stats["split_sizes"] = {k: len(v.ids) for k, v in splits.items()}
    if not len(splits["train"].ids) or not len(splits["validation"].ids):
        raise DataError(f"too few usable rows to train: split sizes {stats['split_sizes']}")
    return TrainingData(splits, class_names, transform, output_names, stats)


def decode_into_files(cache: DecodedImageCache, frame: pd.DataFrame, folder: Path, image_shape: tuple[int, int, int],
                      *, threads: int, block: int = DECODE_BLOCK) -> tuple[np.ndarray, list, dict[str, PixelFile]]:
    """(which rows decoded, their geometries (None where not), a pixel file per split of the rows that did, in row
    order), decoding `block` rows at a time: memory holds one block of pixels whatever the frame's length."""
    writers = {name: PixelWriter(Path(folder) / f"{name}.pixels", image_shape) for name in SPLITS}
    paths, split_of = frame["path"].tolist(), frame["split"].tolist()
    ok, geometries = np.zeros(len(paths), dtype=bool), [None] * len(paths)
    for start in range(0, len(paths), block):
        loaded = cache.load_many(paths[start:start + block], threads=threads, pixels=True)
        for row, (pixels, geometry, _, _) in enumerate(loaded, start):
            if pixels is not None:
                writers[split_of[row]].append(pixels)
                ok[row], geometries[row] = True, geometry
    return ok, geometries, {name: writer.finish() for name, writer in writers.items()}


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
